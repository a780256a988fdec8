"""slimbench's OpenVINO runtime against OpenVINO's own generate loop (OpenVINO GenAI's
``LLMPipeline``) on one OpenVINO artifact: decode ms/token of each, rounds interleaved in one
process, so that the runtime slimbench measures is shown to run at the speed users deploy.

    pip install openvino-genai openvino-tokenizers   # matching the installed openvino
    python scripts/openvino_own_loop.py ARTIFACT [--prompt 128] [--new-tokens 64] [--rounds 5]

GenAI gets a copy of the artifact's IR whose ``logits_index`` input (slimbench's: the
positions that get logits) is the constant [-1], the last position, as slimbench's runtime
compiles it for generation; GenAI cannot feed the input. Both run greedy on the same prompt ids with
the same threads; the figure is the median over rounds of each side's mean step time after
the first token.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from slimbench.bench.runtimes import make_runtime
from slimbench.compress.loader import load_artifact
from slimbench.compress.openvino_model import OV_XML, last_position
from slimbench.compress.reference import REFERENCE_DIR


def genai_copy(artifact: Path, out: Path) -> Path:
    """A folder GenAI's ``LLMPipeline`` opens: the IR with ``logits_index`` fixed to [-1],
    the artifact's config, and a tokenizer IR (the artifact's, else the reference's: the
    prompt goes in as ids, so the tokenizer is only opened)."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from transformers import AutoTokenizer

    shutil.copytree(artifact, out)
    model = ov.Core().read_model(str(artifact / OV_XML))
    last_position(model)  # as slimbench's runtime compiles it for generation
    (out / OV_XML).unlink()
    (out / OV_XML.replace(".xml", ".bin")).unlink()
    ov.save_model(model, str(out / OV_XML), compress_to_fp16=False)
    source = artifact if (artifact / "tokenizer.json").exists() else REFERENCE_DIR
    tok, detok = convert_tokenizer(AutoTokenizer.from_pretrained(source), with_detokenizer=True)
    ov.save_model(tok, str(out / "openvino_tokenizer.xml"))
    ov.save_model(detok, str(out / "openvino_detokenizer.xml"))
    return out


def slimbench_round(rt, prompt: np.ndarray, new_tokens: int) -> float:
    """Mean seconds per decode step of one greedy generation on slimbench's runtime."""
    logits, past = rt.forward(prompt, last_only=True)
    token = logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits, past = rt.forward(token, past)
        token = logits[:, -1:].argmax(-1)
    return (time.perf_counter() - t0) / (new_tokens - 1)


def genai_round(pipe, prompt: np.ndarray, new_tokens: int) -> float:
    """GenAI's own mean time per output token after the first (its ``get_tpot``)."""
    import openvino as ov
    import openvino_genai as og

    config = og.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = new_tokens
    config.do_sample, config.ignore_eos = False, True
    inputs = og.TokenizedInputs(ov.Tensor(prompt), ov.Tensor(np.ones_like(prompt)))
    result = pipe.generate(inputs, config)
    return result.perf_metrics.get_tpot().mean / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import openvino_genai as og

    loaded = load_artifact(str(args.artifact))
    rt = make_runtime(loaded, threads=args.threads)
    prompt = np.random.default_rng(0).integers(0, rt.vocab_size, (1, args.prompt))
    with tempfile.TemporaryDirectory(prefix="ov-genai-") as tmp:
        pipe = og.LLMPipeline(str(genai_copy(args.artifact, Path(tmp) / "m")), "CPU",
                              {"INFERENCE_NUM_THREADS": args.threads,
                               "INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"})
        sides = {"slimbench": lambda: slimbench_round(rt, prompt, args.new_tokens),
                 "genai": lambda: genai_round(pipe, prompt, args.new_tokens)}
        for run in sides.values():  # warm-up
            run()
        times: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(args.rounds):
            for name in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
                times[name].append(sides[name]())
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"{args.artifact.name}: decode ms/token, median of {args.rounds} interleaved rounds "
          f"(prompt {args.prompt}, {args.new_tokens} new tokens, {args.threads} threads): "
          f"slimbench {ms['slimbench']:.2f}, GenAI LLMPipeline {ms['genai']:.2f} "
          f"(slimbench / GenAI {ms['slimbench'] / ms['genai']:.3f})")


if __name__ == "__main__":
    main()

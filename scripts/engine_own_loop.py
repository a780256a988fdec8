"""slimbench's runtime for an engine's artifact against that engine's own generate loop:
decode ms/token of each, rounds interleaved in one process, so that the runtime slimbench
measures is shown to run at the speed users deploy.

    python scripts/engine_own_loop.py ARTIFACT [--prompt 128] [--new-tokens 64] [--rounds 5]

- OpenVINO: GenAI's ``LLMPipeline`` (``pip install openvino-genai openvino-tokenizers``,
  matching the installed openvino) on a copy of the IR whose ``logits_index`` input is the
  constant [-1], as slimbench's runtime compiles it for generation (GenAI cannot feed it);
  its figure is GenAI's own time per output token.
- CTranslate2: one ``generate_batch`` of n tokens, its decode time that of n tokens less that
  of one, per token (the engine's loop with no Python between steps).
- ONNX Runtime GenAI: the loop of its documentation and examples, a ``Generator`` that
  ``append_tokens`` the prompt and calls ``generate_next_token`` and ``get_next_tokens`` per
  token, sized to the generation (slimbench's runtime sizes its generators to the model's
  positions).

Both sides run greedy on the same prompt ids with the same threads; each figure is the median
over rounds of a side's mean step time after the first token.
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
    """Mean seconds per decode step of one greedy generation on slimbench's runtime, by the
    calls its latency scenarios time (``greedy_start``, ``greedy_step``)."""
    token, state = rt.greedy_start(prompt)
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        token, state = rt.greedy_step(token, state)
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


def ct2_round(generator, tokens: list[str], new_tokens: int) -> float:
    """CTranslate2's own loop: (time of n tokens - time of 1) / (n - 1)."""
    def run(n: int) -> float:
        t0 = time.perf_counter()
        generator.generate_batch([tokens], beam_size=1, sampling_topk=1, max_length=n,
                                 min_length=n, include_prompt_in_result=False)
        return time.perf_counter() - t0

    return (run(new_tokens) - run(1)) / (new_tokens - 1)


def genai_own_round(model, prompt: np.ndarray, new_tokens: int) -> float:
    """GenAI's own loop: mean seconds per ``generate_next_token`` after the first token."""
    from slimbench.compress.genai_model import generator

    g = generator(model, 1, prompt.shape[1] + new_tokens)
    g.append_tokens(prompt.astype(np.int32))
    g.generate_next_token()
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        g.generate_next_token()
        g.get_next_tokens()  # as its examples stream each token
    return (time.perf_counter() - t0) / (new_tokens - 1)


def own_loop(rt, prompt: np.ndarray, args, tmp: Path):
    """(engine's name, one round of its own loop) for the runtime's engine."""
    if rt.backend == "ctranslate2":
        tokens = [rt.tokens[i] for i in prompt[0]]
        return "CTranslate2 generate_batch", lambda: ct2_round(rt.generator, tokens,
                                                               args.new_tokens)
    if rt.backend == "genai":
        return "GenAI Generator loop", lambda: genai_own_round(rt.model, prompt,
                                                               args.new_tokens)
    if rt.backend != "openvino":
        raise SystemExit(f"{args.artifact}: a {rt.backend} artifact; this script compares "
                         "the openvino, ctranslate2 and genai runtimes with their engines' "
                         "loops")
    import openvino_genai as og

    pipe = og.LLMPipeline(str(genai_copy(args.artifact, tmp / "m")), "CPU",
                          {"INFERENCE_NUM_THREADS": args.threads,
                           "INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"})
    return "GenAI LLMPipeline", lambda: genai_round(pipe, prompt, args.new_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rt = make_runtime(load_artifact(str(args.artifact)), threads=args.threads)
    prompt = np.random.default_rng(0).integers(0, rt.vocab_size, (1, args.prompt))
    with tempfile.TemporaryDirectory(prefix="own-loop-") as tmp:
        engine, own = own_loop(rt, prompt, args, Path(tmp))
        sides = {"slimbench": lambda: slimbench_round(rt, prompt, args.new_tokens),
                 engine: own}
        for run in sides.values():  # warm-up
            run()
        times: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(args.rounds):
            for name in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
                times[name].append(sides[name]())
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"{args.artifact.name} ({rt.backend}): decode ms/token, median of {args.rounds} "
          f"interleaved rounds (prompt {args.prompt}, {args.new_tokens} new tokens, "
          f"{args.threads} threads): slimbench {ms['slimbench']:.2f}, {engine} "
          f"{ms[engine]:.2f} (slimbench / engine {ms['slimbench'] / ms[engine]:.3f})")

if __name__ == "__main__":
    main()

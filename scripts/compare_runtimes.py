"""Side-by-side latency of artifacts through slimbench's own loop, and the ORT loop overhead.

For each artifact: prefill(ctx) ms and decode ms/token with a KV cache (bench.scenarios).
For ONNX artifacts also the floor under the loop, measured on the same decode steps:
  run ms   time inside ``session.run_with_iobinding`` per decode step of slimbench's loop;
  overhead what the loop adds per token around it (binding, logits to numpy, argmax),
           measured on the same steps; "cold" is the first generation at these lengths,
           which builds the decode bindings that later ones reuse;
  plain    a plain ``session.run`` with numpy feeds at the middle past length, the way
           simple ORT generate loops step (outputs allocated by ORT, cache copied to numpy).
`hf generate` times ``model.generate`` of a torch spec for orientation. With --perplexity,
each row also gets parameters (nonzero), weight bytes on disk and the perplexity task's score
on the artifact itself.

    python scripts/compare_runtimes.py --threads 2 shape:gpt2 /tmp/g2/torch-int8 /tmp/g2/onnx
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from slimbench.bench.measure.environment import set_threads
from slimbench.bench.measure.scenarios import (
    decode_latency,
    decode_start,
    decode_steps,
    prefill_latency,
    prompt_tokens,
)
from slimbench.bench.runtimes import OrtRuntime, make_runtime
from slimbench.compress.loader import load_artifact
from slimbench.log import setup_logging


class _TimedSession:
    """Wraps an InferenceSession and adds up the time spent inside ``run_with_iobinding``."""

    def __init__(self, session) -> None:
        self.session, self.spent = session, 0.0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run_with_iobinding(self, binding) -> None:
        t0 = time.perf_counter()
        self.session.run_with_iobinding(binding)
        self.spent += time.perf_counter() - t0


def ort_floor(rt: OrtRuntime, context: int, new_tokens: int, repeats: int) -> dict:
    """Per decode step: ORT's own run time, and what the loop around it adds, measured on the
    same steps (so machine drift between two measurements cannot fake or hide overhead)."""
    prompt = prompt_tokens(rt.vocab_size, context).numpy()
    rt.reset_cache()  # first repeat is cold: it builds the decode bindings for these lengths
    session, timed = rt.session, _TimedSession(rt.session)
    rt.session = timed
    runs, overheads = [], []
    try:
        for i in range(repeats + 1):
            state = decode_start(rt, prompt)
            timed.spent = 0.0
            # the decode scenario's steps (its unit of work after the prefill)
            total = sum(decode_steps(rt, state, new_tokens).steps)
            overhead = (total - timed.spent) / new_tokens * 1e3
            if i:
                runs.append(timed.spent / new_tokens * 1e3)
                overheads.append(overhead)
            else:
                cold = overhead
    finally:
        rt.session = session
    mid = context + new_tokens // 2
    past = [np.zeros((1, rt.kv_heads, mid, rt.head_dim), dtype=rt.kv_dtype)
            for _ in rt.input_names[1:]]
    feeds = rt.onnx.feeds(prompt[:, :1], past, last_only=True)  # the loop's step, unbound
    plain = []
    for _ in range(new_tokens * (repeats + 1)):
        t0 = time.perf_counter()
        session.run(None, feeds)
        plain.append((time.perf_counter() - t0) * 1e3)
    return {"run_ms": statistics.median(runs), "overhead_ms": statistics.median(overheads),
            "overhead_cold_ms": cold,
            "plain_ms": statistics.median(plain)}


def hf_generate_ms(spec: str, context: int, new_tokens: int, repeats: int) -> float:
    model = load_artifact(spec).model
    ids = prompt_tokens(model.config.vocab_size, context)
    kw = {"do_sample": False, "pad_token_id": 0}
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            t1 = time.perf_counter()
            model.generate(ids, max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1,
                           **kw)
            t2 = time.perf_counter()
            if i:  # per token: the longer run minus the prefill-only run
                times.append(((t2 - t1) - (t1 - t0)) / new_tokens * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="+", help="model specs or artifact directories")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hf-generate", help="also time model.generate of this torch spec")
    ap.add_argument("--perplexity", action="store_true",
                    help="add parameters, bytes and perplexity (full lm_stdlib set)")
    args = ap.parse_args()
    setup_logging(0)
    set_threads(args.threads)
    print(f"{'artifact':<34} {'prefill ms':>10} {'decode ms/tok':>13} {'run ms':>7} "
          f"{'overhead':>8} {'cold':>8} {'plain run':>9}")
    for spec in args.specs:
        loaded = load_artifact(spec)
        rt = make_runtime(loaded, threads=args.threads)
        pre = prefill_latency(rt, args.context).measurement("prefill_ms").median
        dec = decode_latency(rt, args.context, args.new_tokens, args.repeats)
        dec_ms = dec.measurement("decode_ms_per_token").median
        row = f"{spec[-34:]:<34} {pre:>10.2f} {dec_ms:>13.2f}"
        if isinstance(rt, OrtRuntime):
            floor = ort_floor(rt, args.context, args.new_tokens, args.repeats)
            row += (f" {floor['run_ms']:>7.2f} {floor['overhead_ms']:>+8.2f} "
                    f"{floor['overhead_cold_ms']:>+8.2f} {floor['plain_ms']:>9.2f}")
        if args.perplexity:
            from slimbench.tasks.generation import run_task

            ppl = run_task(rt, loaded.tokenizer, "perplexity").score.value
            info = loaded.info
            row += (f"  params {info.parameters:,} (nonzero {info.nonzero_parameters:,}) "
                    f"bytes {info.bytes_on_disk:,} ppl {ppl:.3f}")
        print(row, flush=True)
    if args.hf_generate:
        ms = hf_generate_ms(args.hf_generate, args.context, args.new_tokens, args.repeats)
        print(f"{'hf generate ' + args.hf_generate:<34} {'':>10} {ms:>13.2f}")


if __name__ == "__main__":
    main()

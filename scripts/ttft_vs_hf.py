"""Time to first token of slimbench artifacts against Hugging Face ``generate``, interleaved.

Each round times, in random order, HF ``model.generate(prompt, max_new_tokens=1)`` of a torch
spec and, for each artifact, slimbench's first step (the generate scenario's unit for one
token: prefill with last-position logits, then argmax), all in this process with the same
threads; the per-round ratio artifact / HF cancels a shared host's drift. Prints medians and
the median per-round ratio with its range.

    python scripts/ttft_vs_hf.py --hf shape:gpt2 runs/gpt2-int4 runs/gpt2-int8 --prompt 128
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from slimbench.bench.measure.environment import set_threads
from slimbench.bench.measure.scenarios import generate_unit, prompt_tokens
from slimbench.bench.runtimes import make_runtime
from slimbench.compress.loader import load_artifact

# An idle ORT session's thread pool spin-waits for 15-50 ms after a run: in one process, the
# next session started within 15 ms ran at 75 ms instead of 43 (prefill 128, gpt2, 2 threads;
# 3 int8 sessions interleaved), at 50 ms it did not. (Across processes, as in the paired
# harness, the effect measured ~3%: its trials are many runs long.)
SPIN_GAP = 0.06


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--hf", required=True, help="torch spec timed with model.generate")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    hf = load_artifact(args.hf).model
    runtimes = {a: make_runtime(load_artifact(a), threads) for a in args.artifacts}
    ids = prompt_tokens(hf.config.vocab_size, args.prompt)

    def hf_first() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            hf.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    def ours(rt) -> float:  # the generate scenario's unit, one token: its time to first token
        return generate_unit(rt, ids, 1).ttft

    jobs = {"hf": hf_first} | {a: (lambda rt=rt: ours(rt)) for a, rt in runtimes.items()}
    times: dict[str, list[float]] = {k: [] for k in jobs}
    rng = random.Random(0)
    for r in range(args.rounds + 2):  # two warm-up rounds
        order = list(jobs)
        rng.shuffle(order)
        got = {}
        for k in order:
            time.sleep(SPIN_GAP)  # the previous job's thread pool stops spinning
            got[k] = jobs[k]()
        if r >= 2:
            for k, v in got.items():
                times[k].append(v)
    base = times["hf"]
    print(f"{'HF generate ' + args.hf:<46} TTFT {statistics.median(base) * 1e3:8.2f} ms")
    for a in args.artifacts:
        ratios = sorted(t / b for t, b in zip(times[a], base, strict=True))
        print(f"{a[-46:]:<46} TTFT {statistics.median(times[a]) * 1e3:8.2f} ms  ratio to HF "
              f"{statistics.median(ratios):.3f} (rounds {ratios[0]:.3f}-{ratios[-1]:.3f})")


if __name__ == "__main__":
    main()

"""Batched generation throughput of ONNX Runtime / torch artifacts, interleaved in one process.

Each round runs, for every artifact in random order, one greedy generation of ``--new``
tokens at each batch size (equal-length seeded prompts of ``--prompt`` tokens: the generate
scenario's ``timed_generation``) after a warm-up round. The per-round ratio tokens/s at batch
B over batch 1 of the same artifact cancels a shared host's drift. Printed per artifact and
batch: median tokens/s, TTFT, TPOT, the decode-phase rate (B / TPOT), and the median
per-round ratio to batch 1 with its range (end to end and decode phase).

    python scripts/batch_throughput.py runs/gpt2-int8 runs/gpt2-fused-int8 --batches 1 8
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from slimbench.bench.measure.environment import set_threads
from slimbench.bench.measure.scenarios import prompt_tokens, timed_generation
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
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    runtimes = {a: make_runtime(load_artifact(a), threads) for a in args.artifacts}
    prompts = {b: prompt_tokens(next(iter(runtimes.values())).vocab_size, args.prompt, b)
               for b in args.batches}
    runs: dict[tuple[str, int], list[dict]] = {(a, b): [] for a in runtimes
                                               for b in args.batches}
    rng = random.Random(0)
    for r in range(args.rounds + 1):  # round 0 warms up
        order = list(runtimes)
        rng.shuffle(order)
        for a in order:
            for b in args.batches:
                time.sleep(SPIN_GAP)  # let the previous run's thread pool stop spinning
                run = timed_generation(runtimes[a], prompts[b].numpy(), args.new, repeats=1,
                                       warmup=0)
                if r:
                    runs[(a, b)].append({"rate": run.rate[0], "ttft": run.ttft[0],
                                         "tpot": run.tpot[0]})
    first = args.batches[0]
    print(f"prompt {args.prompt}, {args.new} new tokens, {threads} threads, "
          f"{args.rounds} rounds")
    for a in runtimes:
        print(a)
        for b in args.batches:
            rows = runs[(a, b)]
            med = {k: statistics.median(x[k] for x in rows) for k in ("rate", "ttft", "tpot")}
            line = (f"  batch {b:3d}: {med['rate']:7.1f} tok/s  TTFT {1e3 * med['ttft']:7.1f} ms"
                    f"  TPOT {1e3 * med['tpot']:6.2f} ms  decode {b / med['tpot']:7.1f} tok/s")
            if b != first:
                base = runs[(a, first)]
                end = [x["rate"] / y["rate"] for x, y in zip(rows, base, strict=True)]
                dec = [b / x["tpot"] / (first / y["tpot"]) for x, y in zip(rows, base,
                                                                           strict=True)]
                line += (f"  x{statistics.median(end):.2f} [{min(end):.2f}, {max(end):.2f}] "
                         f"of batch {first}; decode x{statistics.median(dec):.2f} "
                         f"[{min(dec):.2f}, {max(dec):.2f}]")
            print(line)


if __name__ == "__main__":
    main()

"""The harness's own figures: repeatability of a cell, and the cost of measuring.

1. Repeatability: the same decode cell run N times, each in its own spawned process; reports
   each median ms/token and the CV of the medians.
2. Overhead: what timing adds per iteration (timer calls + bookkeeping, measured by timing an
   empty callable the same way), as a share of the reference model's decode step.

    python scripts/harness_checks.py --model shape:gpt2 --runs 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

from slimbench.bench.measure.isolation import run_isolated
from slimbench.log import setup_logging


def repeatability(model: str, runs: int, threads: int, context: int, new_tokens: int,
                  repeats: int) -> tuple[list, list]:
    """Each run's median ms/token and its fraction of the weight-bytes/bandwidth floor (the
    bandwidth measured in the same process: how much of the drift is the host's memory)."""
    cfg = {"prefill": [], "decode_contexts": [context], "new_tokens": new_tokens,
           "generate_prompt": 0, "repeats": repeats, "min_seconds": 0.0}
    medians, fractions = [], []
    for i in range(runs):
        r = run_isolated("slimbench.bench.measure.cell:latency_cell",
                         {"model": model, "threads": threads, "config": cfg}, timeout=900)
        if r.status != "ok":
            raise SystemExit(f"run {i}: {r.reason}")
        scenario = r.result.latency.scenarios[0]
        dec = scenario.measurements[0]  # decode_ms_per_token
        medians.append(dec.median)
        fractions.append(scenario.derived.get("floor_fraction"))
        env = r.result.environment
        print(f"run {i + 1}: median {dec.median:.3f} ms/token (CV within run "
              f"{dec.cv:.1%}, 95% CI {dec.ci95[0]:.3f}-{dec.ci95[1]:.3f});"
              f" copy bandwidth {env['memory_bandwidth_bytes_per_s'] / 1e9:.2f} GB/s, load "
              f"{env.get('load_average_1m')}", flush=True)
    return medians, fractions


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def overhead_per_iteration(n: int = 200_000) -> float:
    """Seconds the decode loop's timing adds per step: two perf_counter calls and an append."""
    samples: list[float] = []
    t_start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        samples.append(time.perf_counter() - t0)
    return (time.perf_counter() - t_start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shape:gpt2")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="decode repeats per run")
    args = ap.parse_args()
    setup_logging(0)
    medians, fractions = repeatability(args.model, args.runs, args.threads, args.context,
                                       args.new_tokens, args.repeats)
    print(f"{args.model}: medians {[round(m, 3) for m in medians]} ms/token; CV of the "
          f"medians {cv(medians):.2%}")
    if None not in fractions:
        print(f"fraction of the bandwidth floor reached: {[round(f, 3) for f in fractions]}; "
              f"CV {cv(fractions):.2%}")
    per_iter = overhead_per_iteration()
    ref = run_isolated("slimbench.bench.measure.cell:latency_cell", {
        "model": "reference", "threads": args.threads, "config": {
            "prefill": [], "decode_contexts": [args.context], "generate_prompt": 0}})
    ref_ms = ref.result.latency.scenarios[0].measurements[0].median
    print(f"harness overhead per timed step {per_iter * 1e6:.2f} us = "
          f"{per_iter * 1e3 / ref_ms:.3%} of the reference's decode step ({ref_ms:.3f} ms)")


if __name__ == "__main__":
    main()

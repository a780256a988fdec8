"""Paired quality of models against one baseline, on the same examples: each candidate's
change in a task's headline metric with its paired bootstrap interval.

    python scripts/paired_quality.py BASE CAND [CAND ...] [--task perplexity] [--split test]
        [--limit N] [--threads 2] [--resamples 2000] [--share]

BASE and each CAND are model specs (``reference``, an artifact folder). Every model is
scored on the same rows of the task (``--split``: ``tune``, ``test`` or ``all``;
docs/splits.md), and the change ``candidate - baseline`` is bootstrapped over the same
resampled examples on both sides (``tasks/paired.py``). A change is called significant where
its 95% interval excludes 0. This is how the compression methods of docs/compression.md are
compared with the methods they improve on.

``--share`` also gives each later candidate's change as a share of the first candidate's
(``SmoothQuant's degradation is 0.3x plain static int8's``), with a 95% interval over the
same resamples: BASE the float model, the first CAND the method improved on.
"""

from __future__ import annotations

import argparse

import numpy as np

from slimbench.bench.measure.cell import scoring_runtime
from slimbench.bench.measure.environment import cpu_info, set_threads
from slimbench.tasks.generation import run_task
from slimbench.tasks.paired import metric_rows, paired_bootstrap, paired_samples
from slimbench.tasks.specs import resolve_task


def records(spec: str, task, split: str, limit: int | None, threads: int) -> list[dict]:
    loaded, runtime = scoring_runtime(spec, "cpu", threads)
    return run_task(runtime, loaded.tokenizer, task, limit, split=split).records()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("candidates", nargs="+")
    ap.add_argument("--task", default="perplexity")
    ap.add_argument("--split", default="test", choices=("tune", "test", "all"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--share", action="store_true",
                    help="each later candidate's change as a share of the first one's")
    args = ap.parse_args()
    set_threads(args.threads)
    task = resolve_task(args.task)
    base = records(args.base, task, args.split, args.limit, args.threads)
    cpu = cpu_info()
    print(f"task {task.name} ({task.metric}, {'higher' if task.higher_is_better else 'lower'}"
          f" is better), split {args.split}, {len(base)} examples; CPU {cpu.model}")
    base_rows, aggregate = metric_rows(base, task.kind, task.metric)
    print(f"  baseline {args.base}: {aggregate(base_rows):.4f}")
    first = None  # (spec, change, resampled changes) of the first candidate
    for spec in args.candidates:
        cand_rows, _ = metric_rows(records(spec, task, args.split, args.limit, args.threads),
                                   task.kind, task.metric)
        if args.share:
            first = share(first, spec, base_rows, cand_rows, aggregate, args.resamples)
        boot = paired_bootstrap(base_rows, cand_rows, aggregate, args.resamples)
        lo, hi = boot.ci95
        rel = 100 / boot.baseline if boot.baseline else float("nan")
        verdict = ("significantly " + ("better" if (hi < 0) != task.higher_is_better
                                       else "worse")) if lo > 0 or hi < 0 else \
            "not significantly different"
        print(f"  {spec}: {boot.candidate:.4f}, change {boot.delta:+.4f} [{lo:+.4f}, {hi:+.4f}]"
              f" = {rel * boot.delta:+.2f}% [{rel * lo:+.2f}%, {rel * hi:+.2f}%]: {verdict}")


def share(first, spec, base_rows, cand_rows, aggregate, resamples: int):
    """Print ``spec``'s change as a share of the first candidate's (the same resampled
    indices on all sides: ``paired_samples`` draws them from one seed); returns ``first``,
    set from ``spec`` when unset."""
    b, c = paired_samples(base_rows, cand_rows, aggregate, resamples)
    change = aggregate(cand_rows) - aggregate(base_rows)
    if first is None:
        return spec, change, c - b
    name, first_change, first_deltas = first
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = np.percentile((c - b) / first_deltas, [2.5, 97.5])
    print(f"  {spec}: change {change / first_change:.2f}x [{lo:.2f}, {hi:.2f}] of {name}'s")
    return first


if __name__ == "__main__":
    main()

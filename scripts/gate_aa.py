r"""A/A check of the gate: repeated runs of one build gated against repeated baseline runs.

Every failure is a false one (nothing changed), so the count says whether the policy's latency
allowances fit the machine's run-to-run spread; per latency metric the script also prints how
far the candidates went beyond the worst baseline run, i.e. the smallest allowance that would
have passed them all, and ``--calibrate`` writes a policy with those allowances (plus a margin).
Check a calibrated policy on runs it was not calibrated on.

    python scripts/gate_aa.py SUITE.yaml --out runs/aa --runs 13 --baselines 3 \
        --calibrate runs/aa/policy.yaml
    python scripts/gate_aa.py SUITE.yaml --out runs/aa2 --runs 10 --baselines 0 \
        --baseline runs/aa/r0 --baseline runs/aa/r1 --baseline runs/aa/r2 \
        --policy runs/aa/policy.yaml
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

from slimbench.bench.orchestrate.runner import run_suite
from slimbench.bench.orchestrate.suite import load_suite
from slimbench.log import setup_logging
from slimbench.reports.gate import compare, excess_over_worst, load_policy, suite_problem
from slimbench.reports.output import write_tables
from slimbench.reports.table import load_results


def ensure_runs(suite_path: Path, out: Path, runs: int) -> list[Path]:
    """``out/r0 .. r{runs-1}``: a run counts as done once its tables are written; one that
    was interrupted is resumed (and refused if it was started with another suite)."""
    suite = load_suite(suite_path)
    dirs = []
    for i in range(runs):
        run_dir = out / f"r{i}"
        if not (run_dir / "results.json").is_file():
            run_suite(suite, run_dir, resume=run_dir.exists(), cache=out / ".artifacts",
                      say=lambda _: None, show_progress=False)
            write_tables(run_dir, suite.baseline_variant)
            print(f"ran {run_dir}", flush=True)
        dirs.append(run_dir)
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", type=Path, help="suite YAML to run repeatedly (one build)")
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs r0, r1, ...")
    ap.add_argument("--runs", type=int, default=13, help="runs in --out (default 13); "
                                                         "finished ones are reused")
    ap.add_argument("--baselines", type=int, default=3,
                    help="the first K runs are the baseline (0: give --baseline)")
    ap.add_argument("--baseline", type=Path, action="append", default=[],
                    help="a baseline run made earlier (repeatable)")
    ap.add_argument("--policy", type=Path, help="gate policy to check (default: built-in)")
    ap.add_argument("--calibrate", type=Path, help="write a policy whose latency allowances "
                                                   "pass these runs, plus --margin")
    ap.add_argument("--margin", type=float, default=0.05,
                    help="added to each calibrated allowance, as a fraction (0.05 = 5 points)")
    args = ap.parse_args()
    setup_logging(0)
    if args.baselines < 0 or args.runs - args.baselines < 1 or not (
            args.baseline or args.baselines):
        ap.error("need at least one baseline run and one candidate run")
    policy = load_policy(args.policy)  # bad inputs fail before any run
    wanted = json.loads(json.dumps(load_suite(args.suite).to_dict()))

    def rows_of(run) -> list[dict]:
        """A run's rows, once its suite is known to be the one under test: runs of another
        suite would make every difference look like noise."""
        rows, suite = load_results(run)
        problem = suite_problem(suite, wanted, run, args.suite)
        if problem:
            ap.error(problem)
        return rows

    earlier = [rows_of(d) for d in args.baseline]
    dirs = ensure_runs(args.suite, args.out, args.runs)
    base_dirs = args.baseline + dirs[:args.baselines]
    candidates = dirs[args.baselines:]
    baselines = earlier + [rows_of(d) for d in dirs[:args.baselines]]
    failures, worst = 0, {}
    for d in candidates:
        rows = rows_of(d)
        failed = [c for c in compare(baselines[0], rows, policy, baselines[1:])
                  if c["status"] == "fail"]
        failures += bool(failed)
        print(f"{d.name}: {'FAIL' if failed else 'pass'}"
              + "".join(f"\n    {c['variant']} {c['metric']}: {c['why']}" for c in failed))
        for metric, value in excess_over_worst(baselines, rows).items():
            worst[metric] = max(worst.get(metric, -math.inf), value)
    print(f"A/A: {failures} false failures in {len(candidates)} gate runs against "
          f"{len(base_dirs)} baseline run(s), policy {args.policy or 'built-in'}")
    print("largest excess over the worst baseline run, per latency metric:")
    for metric, value in sorted(worst.items()):
        print(f"  {metric:<28} {value:+.1%}")
    if args.calibrate:
        data = yaml.safe_load(args.policy.read_text()) if args.policy else {}
        data = data or {}
        data.setdefault("metrics", {})
        for metric, value in worst.items():
            # rounded up to whole percent: an allowance is a policy, not a measurement
            allowed = math.ceil(max(value, 0.0) * 100 + args.margin * 100) / 100
            data["metrics"][metric] = {"relative": allowed}
        args.calibrate.write_text(yaml.safe_dump(data, sort_keys=True))
        print(f"wrote {args.calibrate}")


if __name__ == "__main__":
    main()

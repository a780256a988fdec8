"""``slimbench demo``: the default suite end to end, then the gate against a committed baseline.

Runs ``bench/suites/demo.yaml`` (every compression variant of the embedded reference, and the
gpt2-124M architecture plain and int8) into ``runs/demo-<timestamp>``, writes its tables and
HTML report, and gates it against ``bench/baselines/demo-cpu.json`` under
``bench/baselines/demo-policy.yaml``: quality and size are gated, latency and memory are
reported only, since the committed baseline was measured on another machine. The committed
baseline records the suite that made it: when overrides (or another suite) change what is
measured, its figures do not apply and the demo skips that gate, saying why.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # bench/: suites/ and baselines/ live there
DEMO_SUITE = HERE / "suites" / "demo.yaml"
DEMO_BASELINE = HERE / "baselines" / "demo-cpu.json"
DEMO_POLICY = HERE / "baselines" / "demo-policy.yaml"
# suite keys that change latency and memory figures only
TIMING = {"threads", "latency"}


def default_run_dir(root: Path = Path("runs")) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = root / f"demo-{stamp}"
    return path if not path.exists() else root / f"demo-{stamp}-{time.time_ns() % 10**6}"


def _inapplicable(suite, baseline: Path, rows: list[dict], recorded: dict | None,
                  policy) -> str | None:
    """Why ``baseline`` (its rows and recorded suite) does not apply to a run of ``suite``;
    None if it does. Timing settings cannot move a figure the policy only reports (the demo's
    policy gates quality and size), so ``threads=1`` keeps the gate."""
    from slimbench.reports.gate import SUITE_KEYS, suite_problem

    gated = {r["kind"] for r in rows if policy.allowance(r["kind"], r["metric"])[1] is not None}
    keys = SUITE_KEYS if gated & {"latency", "memory"} else \
        tuple(k for k in SUITE_KEYS if k not in TIMING)
    return suite_problem(recorded, json.loads(json.dumps(suite.to_dict())), baseline.name,
                         "this demo run", keys)


def run_demo(run_dir: Path, overrides: list[str] = (), baseline: Path = DEMO_BASELINE,
             policy: Path = DEMO_POLICY, suite_path: Path | None = None, resume: bool = False,
             say=print) -> bool:
    """Run the demo suite into ``run_dir``, report, gate; returns whether the gate passed
    (True where it was skipped: the committed baseline measured another suite)."""
    from slimbench import atomic
    from slimbench.bench.orchestrate.runner import check_run_dir, run_suite
    from slimbench.bench.orchestrate.suite import load_suite
    from slimbench.errors import UsageError
    from slimbench.reports.gate import compare, load_policy, markdown, verdict
    from slimbench.reports.output import write_report
    from slimbench.reports.table import load_results, load_rows

    t0 = time.perf_counter()
    suite_path = suite_path or DEMO_SUITE
    suite = load_suite(suite_path, overrides)  # everything checked before any work
    gate_policy = load_policy(policy)
    baseline_rows, baseline_suite = load_results(baseline)
    check_run_dir(suite, Path(run_dir), resume)
    problem = _inapplicable(suite, baseline, baseline_rows, baseline_suite, gate_policy)
    if problem and baseline != DEMO_BASELINE:
        raise UsageError(f"{problem}; run the demo without --baseline, then compare with "
                         "`slimbench gate --allow-different-suites`")
    if problem:
        say(f"note: the gate will be skipped: {problem}. The committed baseline does not apply; "
            "gate against a run made with the same overrides (--baseline RUN/results.json)")
    say(f"slimbench demo: {len(suite.variants)} variants x {len(suite.devices)} devices "
        f"({suite_path.name}) -> {run_dir}")
    results = run_suite(suite, run_dir, resume=resume, say=say)
    report = write_report(run_dir, suite.baseline_variant)
    ok = sum(r["status"] == "ok" for r in results)
    say(f"{ok} of {len(results)} cells ok ({sum(r['status'] == 'skipped' for r in results)} "
        f"skipped) in {time.perf_counter() - t0:.0f} s")
    say(f"report: {report['html']}")
    say(f"tables: {run_dir / 'results.csv'}, {run_dir / 'summary.csv'}")
    if problem:
        say(f"verdict against {baseline.name}: SKIPPED (it measured another suite; see the note "
            "above)")
        return True
    checks = compare(baseline_rows, load_rows(run_dir / "results.json"), gate_policy)
    text = markdown(checks)
    atomic.write_text(run_dir / "gate.md", text)
    failed = [c for c in checks if c["status"] == "fail"]
    for c in failed[:10]:
        say(f"  FAIL {c['variant']} ({c['device']}) {c['metric']}: {c['why']}")
    if len(failed) > 10:
        say(f"  ... and {len(failed) - 10} more in {run_dir / 'gate.md'}")
    say(f"verdict against {baseline.name} ({policy.name}): "
        f"{verdict(checks).removeprefix('slimbench gate: ')}")
    return not failed

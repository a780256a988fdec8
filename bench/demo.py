"""``slimbench demo``: the default suite end to end, then the gate against a committed baseline.

Runs ``bench/suites/demo.yaml`` (every compression variant of the embedded reference, and the
gpt2-124M architecture plain and int8) into ``runs/demo-<timestamp>``, writes its tables and
HTML report, and gates it against ``bench/baselines/demo-cpu.json`` under
``bench/baselines/demo-policy.yaml``: quality and size are gated, latency and memory are
reported only, since the committed baseline was measured on another machine.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).parent
DEMO_SUITE = HERE / "suites" / "demo.yaml"
DEMO_BASELINE = HERE / "baselines" / "demo-cpu.json"
DEMO_POLICY = HERE / "baselines" / "demo-policy.yaml"
# suite keys whose overrides change what the committed baseline measured (not just how fast)
MEASURED = {"variants", "tasks", "task_limit", "perplexity_limit"}


def default_run_dir(root: Path = Path("runs")) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = root / f"demo-{stamp}"
    return path if not path.exists() else root / f"demo-{stamp}-{time.time_ns() % 10**6}"


def run_demo(run_dir: Path, overrides: list[str] = (), baseline: Path = DEMO_BASELINE,
             policy: Path = DEMO_POLICY, suite_path: Path | None = None, resume: bool = False,
             say=print) -> bool:
    """Run the demo suite into ``run_dir``, report, gate; returns whether the gate passed."""
    from slimbench import atomic
    from slimbench.bench.runner import check_run_dir, run_suite
    from slimbench.bench.suite import load_suite
    from slimbench.reports.gate import compare, load_policy, markdown, verdict
    from slimbench.reports.output import write_report
    from slimbench.reports.table import load_rows

    t0 = time.perf_counter()
    suite_path = suite_path or DEMO_SUITE
    suite = load_suite(suite_path, overrides)  # everything checked before any work
    gate_policy = load_policy(policy)
    baseline_rows = load_rows(baseline)
    check_run_dir(suite, Path(run_dir), resume)
    changed = sorted({o.partition("=")[0].split(".")[0] for o in overrides} & MEASURED)
    if changed and baseline == DEMO_BASELINE:
        say(f"note: {', '.join(changed)} changed: the committed baseline was measured without "
            "these overrides, so its quality figures may not apply; gate against a run made "
            "with the same overrides (--baseline RUN/results.json)")
    say(f"slimbench demo: {len(suite.variants)} variants x {len(suite.devices)} devices "
        f"({suite_path.name}) -> {run_dir}")
    results = run_suite(suite, run_dir, resume=resume, say=say)
    report = write_report(run_dir, suite.baseline_variant)
    checks = compare(baseline_rows, load_rows(run_dir / "results.json"), gate_policy)
    text = markdown(checks)
    atomic.write_text(run_dir / "gate.md", text)
    ok = sum(r["status"] == "ok" for r in results)
    say(f"{ok} of {len(results)} cells ok ({sum(r['status'] == 'skipped' for r in results)} "
        f"skipped) in {time.perf_counter() - t0:.0f} s")
    say(f"report: {report['html']}")
    say(f"tables: {run_dir / 'results.csv'}, {run_dir / 'summary.csv'}")
    failed = [c for c in checks if c["status"] == "fail"]
    for c in failed[:10]:
        say(f"  FAIL {c['variant']} ({c['device']}) {c['metric']}: {c['why']}")
    if len(failed) > 10:
        say(f"  ... and {len(failed) - 10} more in {run_dir / 'gate.md'}")
    say(f"verdict against {baseline.name} ({policy.name}): "
        f"{verdict(checks).removeprefix('slimbench gate: ')}")
    return not failed

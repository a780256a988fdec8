"""``slimbench demo``: the default suite end to end, its acceptance criteria, then the gate
against a committed baseline.

Runs ``bench/suites/demo.yaml`` (one variant per kind of compression of the embedded
reference, and the gpt2-124M architecture plain and ORT int8; ``--full``: ``demo-full.yaml``,
every variant) into ``runs/demo-<timestamp>``, evaluates the suite's
acceptance criteria within the run (quality paired on the same examples, latency measured
paired and interleaved against each variant's baseline: portable across machines), writes its
tables and HTML report, and gates it against the committed baseline run
``bench/baselines/demo-cpu/`` (its results, suite and per-example outputs) under
``bench/baselines/demo-policy.yaml``: quality with paired tests on the same examples, size
exactly; latency and memory are reported only, since the committed baseline was measured on
another machine. The committed baseline records the suite that made it: when overrides (or
another suite) change what is measured, its figures do not apply and the demo skips that gate,
saying why. The committed baseline was made with the full suite: a quick demo is gated on the
variants it ran.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from slimbench.schema import Row

HERE = Path(__file__).resolve().parent.parent  # bench/: suites/ and baselines/ live there
DEMO_SUITE = HERE / "suites" / "demo.yaml"
DEMO_FULL_SUITE = HERE / "suites" / "demo-full.yaml"
# what a first run takes on 2 cores (artifacts built), said before it starts: measured on an
# Intel Xeon (AMX) and an AVX2-only AMD EPYC; the cache makes later runs shorter
ESTIMATE = {DEMO_SUITE: "2-3 minutes", DEMO_FULL_SUITE: "4-10 minutes"}
DEMO_BASELINE = HERE / "baselines" / "demo-cpu"
DEMO_POLICY = HERE / "baselines" / "demo-policy.yaml"
# suite keys that change latency and memory figures only
TIMING = {"threads", "latency"}


def default_run_dir(root: Path = Path("runs")) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = root / f"demo-{stamp}"
    return path if not path.exists() else root / f"demo-{stamp}-{time.time_ns() % 10**6}"


def _inapplicable(suite, baseline: Path, rows: list[Row], recorded: dict | None,
                  policy) -> str | None:
    """Why ``baseline`` (its rows and recorded suite) does not apply to a run of ``suite``;
    None if it does. Timing settings cannot move a figure the policy only reports (the demo's
    policy gates quality and size), so ``threads=1`` keeps the gate."""
    from slimbench.reports.gate import SUITE_KEYS, suite_problem

    gated = {r.kind for r in rows if policy.allowance(r.kind, r.metric)[1] is not None}
    timing = bool(gated & {"latency", "memory"})
    keys = SUITE_KEYS if timing else tuple(k for k in SUITE_KEYS if k not in TIMING)
    # a task added since the baseline was made brings metrics it has none of (new: not
    # compared) and moves no other task's figure; only memory could move, which such a policy
    # reports, so the baseline's own metrics stay gated
    return suite_problem(recorded, json.loads(json.dumps(suite.to_dict())), baseline.name,
                         "this demo run", keys, added_tasks=not timing)


def run_demo(run_dir: Path, overrides: list[str] = (), baseline: Path = DEMO_BASELINE,
             policy: Path = DEMO_POLICY, suite_path: Path | None = None, resume: bool = False,
             say=print) -> bool:
    """Run the demo suite into ``run_dir``, evaluate its acceptance criteria, report, gate;
    returns whether every criterion held and the gate passed (a gate skipped because the
    committed baseline measured another suite counts as passed)."""
    from slimbench.bench.orchestrate.acceptance import evaluate_acceptance
    from slimbench.bench.orchestrate.runner import check_run_dir, run_suite
    from slimbench.bench.orchestrate.suite import load_suite
    from slimbench.errors import UsageError
    from slimbench.reports.gate import load_policy
    from slimbench.reports.output import write_report
    from slimbench.reports.table import load_results

    t0 = time.perf_counter()
    suite_path = suite_path or DEMO_SUITE
    suite = load_suite(suite_path, overrides)  # everything checked before any work
    gate_policy = load_policy(policy)
    baseline_results = load_results(baseline)
    baseline_suite = baseline_results.suite
    # a quick demo runs a subset of the baseline's variants: it is gated on those (the gate
    # still fails any of them that lacks a metric the baseline has)
    ran = {v.name for v in suite.variants}
    baseline_rows = [r for r in baseline_results.rows if r.variant in ran]
    check_run_dir(suite, Path(run_dir), resume)
    problem = _inapplicable(suite, baseline, baseline_rows, baseline_suite, gate_policy)
    if problem and baseline != DEMO_BASELINE:
        raise UsageError(f"{problem}; run the demo without --baseline, then compare with "
                         "`slimbench gate --allow-different-suites`")
    if problem:
        say(f"note: the gate will be skipped: {problem}. The committed baseline does not apply; "
            "gate against a run made with the same overrides (--baseline RUN/results.json)")
    estimate = ESTIMATE.get(suite_path)
    say(f"slimbench demo: {len(suite.variants)} variants x {len(suite.devices)} devices "
        f"({suite_path.name}) -> {run_dir}"
        + (f"; a first run takes about {estimate} on 2 cores" if estimate else ""))
    results = run_suite(suite, run_dir, resume=resume, say=say)
    ok = sum(r.status == "ok" for r in results)
    say(f"{ok} of {len(results)} cells ok ({sum(r.status == 'skipped' for r in results)} "
        f"skipped) in {time.perf_counter() - t0:.0f} s")
    t1 = time.perf_counter()
    criteria = evaluate_acceptance(suite, run_dir, say=say) if suite.acceptance else []
    report = write_report(run_dir, suite.baseline_variant)  # after acceptance: it shows them
    say(f"acceptance and report in {time.perf_counter() - t1:.0f} s; report: {report.html}")
    say(f"tables: {run_dir / 'results.csv'}, {run_dir / 'summary.csv'}")
    accepted = not any(c.status == "fail" for c in criteria)
    if problem:
        say(f"verdict against {baseline.name}: SKIPPED (it measured another suite; see the note "
            "above)")
        return accepted
    passed = _gate(run_dir, baseline, baseline_rows, gate_policy, policy.name, say)
    say(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return passed and accepted


def _gate(run_dir: Path, baseline: Path, baseline_rows: list[Row], gate_policy,
          policy_name: str, say) -> bool:
    """The run against the committed baseline, paired where both hold per-example outputs;
    writes gate.md, says the failures and the verdict; returns whether it passed."""
    from slimbench import atomic
    from slimbench.reports.evidence import load_evidence
    from slimbench.reports.gate import compare, markdown, verdict
    from slimbench.reports.table import load_rows

    evidence = (load_evidence(baseline), load_evidence(run_dir))
    checks = compare(baseline_rows, load_rows(run_dir / "results.json"), gate_policy,
                     evidence=evidence)
    atomic.write_text(run_dir / "gate.md", markdown(checks))
    failed = [c for c in checks if c.status == "fail"]
    for c in failed[:10]:
        say(f"  FAIL {c.variant} ({c.device}) {c.metric}: {c.why}")
    if len(failed) > 10:
        say(f"  ... and {len(failed) - 10} more in {run_dir / 'gate.md'}")
    paired = sum(c.paired is not None for c in checks)
    say(f"verdict against {baseline.name} ({policy_name}; {paired} quality checks paired): "
        f"{verdict(checks).removeprefix('slimbench gate: ')}")
    return not failed

"""The gate's inputs: malformed rows, non-finite figures and policies, and runs of different
suites are refused with one clear line (exit 2), never a traceback or a silent PASS."""

import copy
import json
import math
from pathlib import Path

import pytest

from slimbench.bench.cli import main
from slimbench.errors import UsageError
from slimbench.reports.gate import compare, load_policy, suite_differences
from slimbench.reports.output import write_tables
from slimbench.reports.table import RESULTS_FORMAT, load_results, load_rows
from slimbench.schema import Row


def _row(metric="perplexity.perplexity", value=47.0, kind="quality", hib=False, ci=None,
         variant="int8"):
    return {"cell": f"{variant}--cpu", "variant": variant, "backend": "torch", "device": "cpu",
            "kind": kind, "metric": metric, "value": value,
            "ci_low": None if ci is None else ci[0], "ci_high": None if ci is None else ci[1],
            "higher_is_better": hib, "unit": ""}


def _typed(rows):
    return [Row(**r) for r in rows]


def _rows(ppl=47.0):
    return [_row(value=ppl), _row("decode_ms_per_token@128", 10.0, "latency", ci=(9.9, 10.1)),
            _row("docstring_summary.bleu", 0.63, hib=True)]


SUITE = {"name": "s", "devices": ["cpu"], "threads": 1, "timeout": 600.0,
         "latency": {"decode_contexts": [128], "repeats": 2}, "tasks": ["perplexity"],
         "task_limit": 20, "perplexity_limit": 3, "baseline_variant": "base",
         "variants": [{"name": "base", "model": "reference", "recipe": [], "quality": True},
                      {"name": "int8", "model": "reference", "quality": True,
                       "recipe": [["torch_dynamic_int8", {}]]}]}


def _suite(**changes):
    return copy.deepcopy(SUITE) | changes


def _write(path: Path, rows, suite=SUITE, **extra) -> Path:
    data = {"slimbench_results": RESULTS_FORMAT, "rows": rows, **extra}
    if suite is not None:
        data["suite"] = suite
    path.write_text(json.dumps(data))
    return path


def _gate(capsys, base, cand, *more):
    rc = main(["gate", "--baseline", str(base), "--candidate", str(cand), *more])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("field,bad,want", [
    ("value", "abc", "value must be a finite number or null, got 'abc'"),
    ("ci_low", [1], "ci_low must be a finite number or null"),
    ("ci_high", True, "ci_high must be a finite number or null, got True"),
    ("higher_is_better", "no", "higher_is_better must be true or false, got 'no'"),
    ("metric", 3, "metric must be text, got 3"),
])
def test_a_malformed_row_is_one_line_naming_file_row_and_field(tmp_path, capsys, field, bad,
                                                               want):
    rows = _rows()
    rows[1][field] = bad
    cand = _write(tmp_path / "cand.json", rows)
    rc, _, err = _gate(capsys, _write(tmp_path / "base.json", _rows()), cand)
    assert rc == 2 and err.count("\n") == 1
    assert f"{cand}: rows[1].{field} " in err and want in err


@pytest.mark.parametrize("data,want", [
    ({"slimbench_results": 1, "rows": [3]}, "rows[0] must be a mapping, got 3"),
    ({"slimbench_results": 1, "rows": {"a": 1}}, "not a slimbench results file"),
    ({"slimbench_results": 1, "rows": [], "suite": [1]}, "suite must be a mapping"),
    ({"slimbench_results": 1, "rows": [], "suite": {"variants": [{"model": "x"}]}},
     "suite must be a mapping"),
    ([], "not a slimbench results file"),
])
def test_a_malformed_results_file_is_one_line(tmp_path, capsys, data, want):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    for args in ((bad, _write(tmp_path / "c.json", _rows())),
                 (_write(tmp_path / "b.json", _rows()), bad)):
        rc, _, err = _gate(capsys, *args)
        assert rc == 2 and err.count("\n") == 1 and want in err, err


def test_a_malformed_cell_in_a_run_directory_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    (run / "cells" / "x.json").write_text(json.dumps({
        "schema_version": 1, "document": "cell", "status": "ok",
        "cell": {"id": "x", "variant": "x", "model": "m", "recipe": [], "device": "cpu"},
        "quality": {"t": {"metrics": 3}}}))
    rc, _, err = _gate(capsys, _write(tmp_path / "b.json", _rows()), run,
                       "--allow-different-suites")
    assert rc == 2 and err.count("\n") == 1 and "x.json: quality.t.task is missing" in err


@pytest.mark.parametrize("policy,key", [
    ("default: {latency: .nan}\n", "default latency"),
    ("default: {quality: .inf}\n", "default quality"),
    ("metrics:\n  perplexity.perplexity: {relative: .nan}\n", "metric perplexity.perplexity"),
    ("metrics:\n  docstring_summary.bleu: {absolute: .inf}\n", "metric docstring_summary.bleu"),
])
def test_a_non_finite_policy_number_is_refused(tmp_path, capsys, policy, key):
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    with pytest.raises(UsageError, match=key):
        load_policy(path)
    same = _write(tmp_path / "same.json", _rows())
    rc, _, err = _gate(capsys, same, same, "--policy", str(path))
    assert rc == 2 and err.count("\n") == 1 and key in err and "non-negative number" in err


def test_a_finite_policy_still_loads(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("default: {latency: null, quality: 0}\n")
    assert load_policy(path).allowance("quality", "x") == ("relative", 0.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_candidate_fails_its_check(tmp_path, capsys, value):
    checks = compare(_typed(_rows()), _typed(_rows(ppl=value)), load_policy(None))
    ppl = next(c for c in checks if c.metric == "perplexity.perplexity")
    assert (ppl.status, ppl.why) == ("fail", "not a finite number")
    assert [c.status for c in checks if c is not ppl] == ["pass", "pass"]
    # also when the policy only reports the metric: a NaN is no figure at all
    path = tmp_path / "report.yaml"
    path.write_text("default: {quality: null}\n")
    ppl = compare(_typed(_rows()), _typed(_rows(ppl=value)), load_policy(path))[0]
    assert (ppl.status, ppl.why) == ("fail", "not a finite number")
    # through the CLI: JSON's NaN / Infinity is no figure the schema allows: the file is
    # refused (exit 2) naming the row, before anything is compared
    base = _write(tmp_path / "b.json", _rows())
    rc, out, err = _gate(capsys, base, _write(tmp_path / "c.json", _rows(ppl=value)))
    assert rc == 2 and out == ""
    assert "c.json: rows[0].value must be a finite number or null, got" in err, err


def test_a_non_finite_candidate_interval_is_no_excuse(tmp_path):
    base = [_row("decode_ms_per_token@128", 10.0, "latency", ci=(9.9, 10.1))]
    cand = [_row("decode_ms_per_token@128", 20.0, "latency", ci=(math.nan, math.nan))]
    check = compare(_typed(base), _typed(cand), load_policy(None))[0]
    assert check.status == "fail" and "by 100.0% (allowed 10%)" in check.why


def test_a_non_finite_baseline_is_bad_input(tmp_path, capsys):
    with pytest.raises(UsageError, match="int8 perplexity.perplexity is not a finite number"):
        compare(_typed(_rows(ppl=math.nan)), _typed(_rows()), load_policy(None))
    with pytest.raises(UsageError, match="not a finite number"):  # one of repeated runs
        compare(_typed(_rows()), _typed(_rows()), load_policy(None),
                [_typed(_rows(ppl=math.inf))])
    rc, _, err = _gate(capsys, _write(tmp_path / "b.json", _rows(ppl=math.inf)),
                       _write(tmp_path / "c.json", _rows()))
    assert rc == 2 and "rows[0].value must be a finite number or null" in err


def test_identical_suites_pass(tmp_path, capsys):
    rc, out, err = _gate(capsys, _write(tmp_path / "b.json", _rows()),
                         _write(tmp_path / "c.json", _rows()))
    assert rc == 0 and "gate: PASS** (3 checks)" in out and "warning" not in err


def test_different_suites_are_refused_unless_allowed(tmp_path, capsys):
    base = _write(tmp_path / "b.json", _rows())
    cand = _write(tmp_path / "c.json", _rows(ppl=37.7), _suite(perplexity_limit=2))
    rc, out, err = _gate(capsys, base, cand)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "measure different things: perplexity_limit: 3 -> 2;" in err
    assert "--allow-different-suites" in err
    # allowed: the comparison runs, with one warning line; the numbers decide (-19.8% is
    # better for perplexity, so it passes) ...
    rc, out, err = _gate(capsys, base, cand, "--allow-different-suites")
    assert rc == 0 and "gate: PASS** (3 checks)" in out
    assert err.startswith("slimbench: warning: ") and "perplexity_limit: 3 -> 2" in err
    assert len([x for x in err.splitlines() if "warning" in x]) == 1
    # ... and a worse figure still fails
    worse = _write(tmp_path / "w.json", _rows(ppl=60.0), _suite(perplexity_limit=2))
    rc, out, _ = _gate(capsys, base, worse, "--allow-different-suites")
    assert rc == 1 and "FAIL" in out


def test_no_suite_in_a_results_file_is_refused_unless_allowed(tmp_path, capsys):
    old = _write(tmp_path / "old.json", _rows(), suite=None)  # written before the suite was
    new = _write(tmp_path / "new.json", _rows())
    for base, cand in ((old, new), (new, old)):
        rc, _, err = _gate(capsys, base, cand)
        assert rc == 2 and f"(no suite in {old})" in err
        assert "cannot verify that" in err and "measure the same thing" in err
        rc, out, err = _gate(capsys, base, cand, "--allow-different-suites")
        assert rc == 0 and "PASS" in out and "warning" in err


def test_each_baseline_is_checked_against_the_candidate(tmp_path, capsys):
    one = _write(tmp_path / "one.json", _rows())
    two = _write(tmp_path / "two.json", _rows(), _suite(threads=2))
    cand = _write(tmp_path / "c.json", _rows())
    rc = main(["gate", "--baseline", str(one), "--baseline", str(two), "--candidate", str(cand)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{two} and {cand} measure different things: threads: 2 -> 1" in err


def test_suite_differences_compare_what_is_measured_only():
    assert suite_differences(SUITE, _suite(name="other", timeout=5.0, devices=["cuda"],
                                           baseline_variant="int8")) == []
    # a variant only one side has is not a difference: its metrics fail closed anyway
    fewer = _suite(variants=SUITE["variants"][:1])
    assert suite_differences(SUITE, fewer) == suite_differences(fewer, SUITE) == []
    changed = _suite(task_limit=50, tasks=["perplexity", "method_name"],
                     latency={"decode_contexts": [64], "repeats": 2},
                     variants=[SUITE["variants"][0] | {"quality": False},
                               SUITE["variants"][1] | {"recipe": [["export_onnx", {}]]}])
    assert suite_differences(SUITE, changed) == [
        'tasks: ["perplexity"] -> ["perplexity", "method_name"]',
        "task_limit: 20 -> 50",
        'latency: {"decode_contexts": [128], "repeats": 2} -> '
        '{"decode_contexts": [64], "repeats": 2}',
        "variant base quality: true -> false",
        'variant int8 recipe: [["torch_dynamic_int8", {}]] -> [["export_onnx", {}]]']
    # tuples (a Suite's to_dict) and lists (suite.json) are the same thing
    assert suite_differences(SUITE, _suite(tasks=("perplexity",))) == []
    # where memory is not gated (the demo's policy), a task added since the baseline is not a
    # difference (its metrics are new); a task dropped still is
    more = _suite(tasks=["perplexity", "next_line"])
    assert suite_differences(SUITE, more, added_tasks=True) == []
    assert suite_differences(more, SUITE, added_tasks=True) == [
        'tasks: ["perplexity", "next_line"] -> ["perplexity"]']
    lm = _suite(tasks=["perplexity", {"lm_eval": {"tasks": ["arc_easy"]}}])
    assert suite_differences(lm, _suite(tasks=["perplexity", {"lm_eval": {
        "tasks": ["arc_easy"]}}, "next_line"]), added_tasks=True) == []


def test_results_json_records_the_suite_of_its_run(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    (run / "suite.json").write_text(json.dumps(SUITE))
    write_tables(run)
    results = load_results(run / "results.json")
    assert results.rows == [] and results.suite == SUITE
    # a run directory without results.json: the suite comes from suite.json
    (run / "results.json").unlink()
    assert (load_results(run).rows, load_results(run).suite) == ([], SUITE)
    # an older results.json (no suite) in a run directory: suite.json answers
    _write(run / "results.json", _rows(), suite=None)
    assert (load_results(run).rows, load_results(run).suite) == (_typed(_rows()), SUITE)
    assert load_results(run / "results.json").suite is None
    assert load_rows(run) == _typed(_rows())
    assert [r.to_dict() for r in load_rows(run)] == _rows()


def test_the_committed_demo_baseline_records_the_demo_suite():
    from slimbench.bench.orchestrate.demo import DEMO_BASELINE, DEMO_FULL_SUITE
    from slimbench.bench.orchestrate.suite import load_suite
    from slimbench.reports.gate import suite_differences

    suite = load_results(DEMO_BASELINE).suite
    current = json.loads(json.dumps(load_suite(DEMO_FULL_SUITE).to_dict()))
    # it measured what the demo measures (acceptance criteria, judged within a run, are not
    # part of a baseline's figures), but for tasks added since, which bring new metrics only
    assert suite_differences(suite, current, added_tasks=True) == []
    assert [t for t in current["tasks"] if t not in suite["tasks"]] in ([], ["next_line"])
    assert suite["variants"] == current["variants"] and suite["devices"] == current["devices"]


def test_demo_skips_an_inapplicable_committed_baseline_before_any_work(tmp_path):
    from slimbench.bench.orchestrate.demo import DEMO_BASELINE, DEMO_POLICY, _inapplicable
    from slimbench.bench.orchestrate.suite import load_suite

    baseline = load_results(DEMO_BASELINE)
    rows, recorded = baseline.rows, baseline.suite
    policy = load_policy(DEMO_POLICY)

    def why(*overrides):
        suite = load_suite(Path("bench/suites/demo.yaml"), list(overrides))
        return _inapplicable(suite, DEMO_BASELINE, rows, recorded, policy)

    assert why() is None
    # the demo policy reports latency only: timing settings keep the gate
    assert why("threads=1", "latency.repeats=5", "devices=[cpu]") is None
    assert "task_limit: 20 -> 5" in why("task_limit=5")
    # a policy that gates latency makes thread counts matter
    assert "threads: 2 -> 1" in _inapplicable(load_suite(Path("bench/suites/demo.yaml"),
                                                         ["threads=1"]),
                                              DEMO_BASELINE, rows, recorded, load_policy(None))


def test_demo_refuses_a_user_baseline_of_another_suite_before_any_work(tmp_path, capsys):
    base = _write(tmp_path / "b.json", _rows(), _suite())
    rc = main(["demo", "--out", str(tmp_path / "never"), "--baseline", str(base)])
    err = capsys.readouterr().err
    assert rc == 2 and "measure different things" in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()

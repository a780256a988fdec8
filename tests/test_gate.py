"""The regression gate: pass on identical runs, fail on each kind of regression and on gaps."""

import copy
import json

import pytest

from slimbench.bench.cli import main
from slimbench.errors import UsageError
from slimbench.reports.gate import compare, load_policy, markdown
from slimbench.reports.table import RESULTS_FORMAT, load_rows, rows_from_cell


def _stat(name, median, lo, hi, unit="ms", hib=False):
    """A measurement as the schema writes it (slimbench/schema), with hand-set figures."""
    return {"name": name, "unit": unit, "higher_is_better": hib, "median": median,
            "ci95": [lo, hi], "n": 10, "cv": 0.01}


def _score(task, metric, value, lo, hi, hib):
    return {"task": task, "version": "1", "metric": metric, "value": value, "ci95": [lo, hi],
            "higher_is_better": hib, "n": 20, "seconds": 1.0,
            "metrics": {metric: {"value": value, "ci95": [lo, hi], "higher_is_better": hib}}}


def _cell():
    """A cell result shaped like the runner's, with hand-set figures."""
    def scenario(kind, *measurements):
        return {"scenario": kind, "tag": "128", "params": {}, "measurements": list(measurements)}

    return {
        "schema_version": 1, "document": "cell",
        "cell": {"id": "int8-ort-cpu", "variant": "int8", "model": "reference", "recipe": [],
                 "backend": "onnxruntime", "device": "cpu"},
        "status": "ok",
        "latency": {"config": {}, "scenarios": [
            scenario("prefill", _stat("prefill_ms", 20.0, 19.5, 20.5)),
            scenario("decode", _stat("decode_ms_per_token", 10.0, 9.9, 10.1)),
            scenario("generate", _stat("ttft_ms", 21.0, 20.0, 22.0),
                     _stat("tpot_ms", 10.0, 9.8, 10.2),
                     _stat("tokens_per_s", 95.0, 93.0, 97.0, "tok/s", True))]},
        "memory": {"peak_rss_bytes": 500_000_000, "model_bytes_on_disk": 3_000_000,
                   "parameters": 2_600_000},
        "quality": {
            "perplexity": _score("perplexity", "perplexity", 47.0, 45.0, 49.0, False),
            "docstring_summary": _score("docstring_summary", "bleu", 0.63, 0.4, 0.9, True)},
    }


def _rows(cell):
    return rows_from_cell(cell)


def _status(checks, metric):
    return next(c for c in checks if c.metric == metric).status


def test_rows_carry_direction_and_intervals():
    rows = {r.metric: r for r in _rows(_cell())}
    assert rows["decode_ms_per_token@128"].higher_is_better is False
    assert rows["tokens_per_s@128"].higher_is_better is True
    assert (rows["perplexity.perplexity"].ci_low, rows["perplexity.perplexity"].ci_high) \
        == (45.0, 49.0)
    assert rows["docstring_summary.bleu"].kind == "quality"
    assert rows["model_bytes_on_disk"].kind == "size"
    assert rows_from_cell(_cell() | {"status": "failed", "reason": "OOM"}) == []


def test_identical_runs_pass():
    checks = compare(_rows(_cell()), _rows(_cell()), load_policy(None))
    assert {c.status for c in checks} == {"pass"} and len(checks) == 10
    assert markdown(checks).startswith("**slimbench gate: PASS** (10 checks)")


@pytest.mark.parametrize("path, value, metric", [
    (("latency", "scenarios", 1, "measurements", 0),
     _stat("decode_ms_per_token", 12.0, 11.8, 12.2), "decode_ms_per_token@128"),
    (("quality", "perplexity", "metrics", "perplexity", "value"), 49.0,
     "perplexity.perplexity"),
    (("quality", "docstring_summary", "metrics", "bleu", "value"), 0.5,
     "docstring_summary.bleu"),
    (("latency", "scenarios", 2, "measurements", 2),
     _stat("tokens_per_s", 70.0, 68.0, 72.0, "tok/s", True), "tokens_per_s@128"),
    (("memory", "model_bytes_on_disk"), 4_000_000, "model_bytes_on_disk"),
])
def test_each_kind_of_regression_fails(path, value, metric):
    cand = copy.deepcopy(_cell())
    target = cand
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    checks = compare(_rows(_cell()), _rows(cand), load_policy(None))
    assert _status(checks, metric) == "fail"
    assert sum(c.status == "fail" for c in checks) == 1
    assert "FAIL** (1 of 10 checks)" in markdown(checks)


def test_latency_change_inside_the_noise_passes():
    cand = copy.deepcopy(_cell())
    # 15% slower median, but the intervals overlap: not a significant regression
    cand["latency"]["scenarios"][0]["measurements"][0] = _stat("prefill_ms", 23.0, 20.0, 26.0)
    check = next(c for c in compare(_rows(_cell()), _rows(cand), load_policy(None))
                 if c.metric == "prefill_ms@128")
    assert check.status == "pass" and "intervals overlap" in check.why


def test_improvements_pass_and_missing_metrics_fail():
    cand = copy.deepcopy(_cell())
    cand["quality"]["perplexity"]["metrics"]["perplexity"]["value"] = 40.0  # better
    del cand["quality"]["docstring_summary"]
    checks = compare(_rows(_cell()), _rows(cand), load_policy(None))
    assert _status(checks, "perplexity.perplexity") == "pass"
    missing = next(c for c in checks if c.metric == "docstring_summary.bleu")
    assert missing.status == "fail" and missing.why == "missing in the candidate"
    failed = _cell() | {"status": "failed", "reason": "OOM"}
    failed_cell = compare(_rows(_cell()), rows_from_cell(failed), load_policy(None))
    assert {c.status for c in failed_cell} == {"fail"}


def test_policy_overrides(tmp_path):
    policy = tmp_path / "gate.yaml"
    policy.write_text("metrics:\n  perplexity.perplexity: {relative: 0.10}\n"
                      "  docstring_summary.bleu: {absolute: 0.2}\n")
    cand = copy.deepcopy(_cell())
    cand["quality"]["perplexity"]["metrics"]["perplexity"]["value"] = 49.0  # +4.3% < 10%
    cand["quality"]["docstring_summary"]["metrics"]["bleu"]["value"] = 0.5  # -0.13 < 0.2
    checks = compare(_rows(_cell()), _rows(cand), load_policy(policy))
    assert {c.status for c in checks} == {"pass"}
    policy.write_text("metrics:\n  bleu: {relative: 0.1, absolute: 2}\n")
    with pytest.raises(UsageError, match="give one of relative / absolute / report"):
        load_policy(policy)
    for bad, message in (("metrics:\n  bleu: {report: 3}\n", "report must be true"),
                         ("default: [1, 2]\n", "default must be a mapping"),
                         ("metrics: [a, b]\n", "metrics must be a mapping"),
                         ("metrics:\n  bleu: {relative: -1}\n", "non-negative number"),
                         ("default: {latency: fast}\n", "or null: report only"),
                         ("default: {speed: 0.1}\n", "must be one of")):
        policy.write_text(bad)
        with pytest.raises(UsageError, match=message):
            load_policy(policy)


def test_a_policy_rule_for_a_metric_the_baseline_lacks_is_an_error(tmp_path):
    policy = tmp_path / "gate.yaml"
    policy.write_text("metrics:\n  perplexity: {report: true}\n")  # perplexity.perplexity
    with pytest.raises(UsageError, match="does not have: perplexity; known: .*"
                                         "perplexity.perplexity"):
        compare(_rows(_cell()), _rows(_cell()), load_policy(policy))
    policy.write_text("metrics:\n  decode_ms_per_token: {relative: 0.5}\n")  # any context
    assert {c.status for c in compare(_rows(_cell()), _rows(_cell()),
                                         load_policy(policy))} == {"pass"}


def test_report_only_kinds_are_shown_not_gated_but_must_be_present(tmp_path):
    policy = tmp_path / "gate.yaml"
    policy.write_text("default: {latency: null, memory: null}\n"
                      "metrics:\n  model_bytes_on_disk: {report: true}\n")
    cand = copy.deepcopy(_cell())
    cand["latency"]["scenarios"][1]["measurements"][0] = _stat("decode_ms_per_token", 30.0, 29, 31)
    cand["memory"]["model_bytes_on_disk"] = 9_000_000
    checks = compare(_rows(_cell()), _rows(cand), load_policy(policy))
    decode = next(c for c in checks if c.metric == "decode_ms_per_token@128")
    assert decode.status == "info" and decode.change == pytest.approx(2.0)
    assert _status(checks, "model_bytes_on_disk") == "info"
    assert _status(checks, "parameters") == "pass"  # size still gated by default
    # 5 latency + peak RSS + bytes on disk reported; parameters + 2 quality gated
    assert markdown(checks).startswith("**slimbench gate: PASS** (3 checks; 7 reported, "
                                       "not gated)")
    del cand["latency"]["scenarios"][1]  # report-only metrics still fail closed when missing
    checks = compare(_rows(_cell()), _rows(cand), load_policy(policy))
    assert _status(checks, "decode_ms_per_token@128") == "fail"


def _decode(median, half=0.1):
    cell = copy.deepcopy(_cell())
    cell["latency"]["scenarios"][1]["measurements"][0] = _stat(
        "decode_ms_per_token", median, median - half, median + half)
    return _rows(cell)


def test_repeated_baselines_hold_each_metric_to_their_worst_run():
    policy = load_policy(None)
    one = compare(_decode(10.0), _decode(12.0), policy)
    assert _status(one, "decode_ms_per_token@128") == "fail"  # +20% on one baseline run
    # two runs of the same build measured 10.0 and 11.5: 12.0 is within 10% of the worst
    runs = compare(_decode(10.0), _decode(12.0), policy, repeats=[_decode(11.5)])
    check = next(c for c in runs if c.metric == "decode_ms_per_token@128")
    assert check.status == "pass" and check.baseline_value == pytest.approx(10.75)
    assert check.baseline_range == (10.0, 11.5) and check.baseline_runs == 2
    worse = compare(_decode(10.0), _decode(13.5), policy, repeats=[_decode(11.5)])
    check = next(c for c in worse if c.metric == "decode_ms_per_token@128")
    assert check.status == "fail"
    assert check.why == ("worse than the worst of 2 baseline runs (11.5) by 17.4% "
                            "(allowed 10%)")
    # higher is better: the worst run is the slowest one
    cell = _cell()
    fast, slow = copy.deepcopy(cell), copy.deepcopy(cell)
    slow["latency"]["scenarios"][2]["measurements"][2] = _stat("tokens_per_s", 80.0, 79.0, 81.0,
                                                               "tok/s", True)
    cand = copy.deepcopy(cell)
    cand["latency"]["scenarios"][2]["measurements"][2] = _stat("tokens_per_s", 75.0, 74.0, 76.0,
                                                               "tok/s", True)
    checks = compare(_rows(fast), _rows(cand), policy, repeats=[_rows(slow)])
    assert _status(checks, "tokens_per_s@128") == "pass"  # -6% vs the 80 tok/s run


SUITE = {"tasks": ["perplexity", "docstring_summary"], "threads": 1}  # what results.json records


def _write_results(path, rows):
    path.write_text(json.dumps({"slimbench_results": RESULTS_FORMAT,
                                "rows": [r.to_dict() for r in rows],
                                "suite": SUITE}))
    return path


def test_cli_exit_codes(tmp_path, capsys):
    base = _write_results(tmp_path / "base.json", _rows(_cell()))
    same = _write_results(tmp_path / "same.json", _rows(_cell()))
    assert main(["gate", "--baseline", str(base), "--candidate", str(same)]) == 0
    worse = copy.deepcopy(_cell())
    worse["quality"]["perplexity"]["metrics"]["perplexity"]["value"] = 60.0
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    (run / "cells" / "int8.json").write_text(json.dumps(worse))
    (run / "suite.json").write_text(json.dumps(SUITE))
    assert main(["gate", "--baseline", str(base), "--candidate", str(run)]) == 1
    out = capsys.readouterr().out
    assert "| FAIL | int8 | onnxruntime | cpu | perplexity.perplexity | 47 | 60 | +27.7% |" in out
    assert len(list(run.glob("gate-*.md"))) == 1  # the summary lands in the run directory
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": 3}')
    assert main(["gate", "--baseline", str(bad), "--candidate", str(same)]) == 2
    assert "not a slimbench results file" in capsys.readouterr().err
    bad.write_text("{not json")
    assert main(["gate", "--baseline", str(bad), "--candidate", str(same)]) == 2
    assert main(["gate", "--baseline", str(tmp_path / "nope"), "--candidate", str(same)]) == 2
    assert load_rows(same) == _rows(_cell())
    # repeated baseline runs: --baseline given twice
    slow = _write_results(tmp_path / "slow.json", _decode(11.5))
    cand = _write_results(tmp_path / "cand.json", _decode(12.0))
    assert main(["gate", "--baseline", str(base), "--candidate", str(cand)]) == 1
    assert main(["gate", "--baseline", str(base), "--baseline", str(slow), "--candidate",
                 str(cand)]) == 0

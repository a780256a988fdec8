"""A suite's acceptance criteria: their validation, their evaluation on a hand-made run
(paired quality tests, size ratios, failed and skipped cells), latency criteria against a
stand-in A/B, the CLI's exit codes, the report's section, and one real run end to end."""

import json
import math
import re

import pytest
import yaml

from slimbench.bench.cli import main
from slimbench.bench.orchestrate.acceptance import evaluate_acceptance
from slimbench.bench.orchestrate.runner import write_cell
from slimbench.bench.orchestrate.suite import load_suite, parse_suite
from slimbench.errors import SlimbenchError, UsageError
from slimbench.schema import CellInfo, CellResult, Memory, QualityScore, Score

INT8 = ["torch_dynamic_int8"]
BASE_SUITE = {
    "name": "acc",
    "variants": {"base": {"model": "reference"},
                 "good": {"model": "reference", "recipe": INT8},
                 "worse": {"model": "reference", "recipe": INT8},
                 "partial": {"model": "reference", "recipe": INT8},
                 "broken": {"model": "reference", "recipe": INT8},
                 "timed": {"model": "reference", "recipe": INT8, "quality": False},
                 "tiny": {"model": "shape:gpt2:n_layer=1,n_embd=32,n_head=2,n_positions=64"}},
    "devices": ["cpu", "cuda"],
    "threads": 1,
    "latency": {"prefill": [16], "decode_contexts": [24], "new_tokens": 4,
                "generate_prompt": 8},
    "tasks": ["perplexity", "method_name"],
    "baseline_variant": "base",
}


def suite_with(acceptance, **changes):
    return parse_suite(BASE_SUITE | {"acceptance": acceptance} | changes, "acc.yaml")


# ---- validation --------------------------------------------------------------------------

@pytest.mark.parametrize("acceptance, changes, message", [
    ({"nope": {"parameters": {"ratio_at_most": 1}}}, {},
     "acc.yaml: acceptance.nope: 'nope' is not a variant (base, good"),
    ({"base": {"parameters": {"ratio_at_most": 1}}}, {},
     "acc.yaml: acceptance.base: variant base is the baseline; criteria compare a variant"),
    ({"tiny": {"parameters": {"ratio_at_most": 1}}}, {},
     "acc.yaml: acceptance.tiny: variant tiny is the baseline of model shape:gpt2"),
    ({"good": {"parameters": {"smaller": 1}}}, {},
     "acc.yaml: acceptance.good.parameters: give one criterion of non_inferior, "
     "no_significant_loss, speedup_at_least, slowdown_at_most, ratio_at_most"),
    ({"good": {"parameters": {"ratio_at_most": 1, "non_inferior": 0.1}}}, {},
     "acc.yaml: acceptance.good.parameters: give one criterion of"),
    ({"good": {"parameters": {"speedup_at_least": 2}}}, {},
     "acc.yaml: acceptance.good.parameters: speedup_at_least needs a latency metric "
     "(latency: decode_ms_per_token, ttft_ms, tpot_ms, tokens_per_s, generate_ms, "
     "prefill_ms;"),
    ({"good": {"perplexity.perplexity": {"slowdown_at_most": 0.1}}}, {},
     "acc.yaml: acceptance.good.perplexity.perplexity: slowdown_at_most needs a latency"),
    ({"good": {"decode_ms_per_token": {"non_inferior": 0.02}}}, {},
     "acc.yaml: acceptance.good.decode_ms_per_token: non_inferior needs a quality metric "
     "task.metric"),
    ({"good": {"perplexity.perplexity": {"ratio_at_most": 1}}}, {},
     "acc.yaml: acceptance.good.perplexity.perplexity: ratio_at_most needs a size or memory"),
    ({"good": {"docstring_body.rougeL": {"non_inferior": 0.02}}}, {},
     "acc.yaml: acceptance.good.docstring_body.rougeL: task 'docstring_body' is not in the "
     "suite's tasks (perplexity, method_name)"),
    ({"good": {"perplexity.ppl": {"non_inferior": 0.02}}}, {},
     "acc.yaml: acceptance.good.perplexity.ppl: task perplexity has no metric 'ppl' (its "
     "metrics: perplexity, bits_per_byte)"),
    ({"timed": {"method_name.f1": {"no_significant_loss": 0.05}}}, {},
     "acc.yaml: acceptance.timed.method_name.f1: variant timed is not scored (quality: false)"),
    ({"good": {"parameters": {"ratio_at_most": 0}}}, {},
     "acc.yaml: acceptance.good.parameters: ratio_at_most must be a number > 0, got 0"),
    ({"good": {"prefill_ms": {"slowdown_at_most": -0.05}}}, {},
     "acc.yaml: acceptance.good.prefill_ms: slowdown_at_most must be a number > 0, got -0.05"),
    ({"good": {"perplexity.perplexity": {"non_inferior": True}}}, {},
     "non_inferior must be a number >= 0, got True"),
    ({"good": {"perplexity.perplexity": {"non_inferior": float("nan")}}}, {},
     "non_inferior must be a number >= 0, got nan"),
    ({"good": {"prefill_ms": {"slowdown_at_most": 0.05}}},
     {"latency": {"prefill": [], "decode_contexts": [24]}},
     "acc.yaml: acceptance.good.prefill_ms: the prefill scenario needs latency.prefill, which "
     "is empty"),
    ({"good": {"ttft_ms": {"slowdown_at_most": 0.05}}}, {"latency": {"generate_prompt": 0}},
     "the generate scenario needs latency.generate_prompt"),
    ({"good": {}}, {}, "acc.yaml: acceptance.good: give metric: {criterion: number} entries"),
    (["good"], {}, "acc.yaml: acceptance must map variants to {metric: {criterion: number}}"),
    ({"good": {"parameters": {"ratio_at_most": 1}}}, {"paired": {"min_seconds": 20,
                                                                 "max_seconds": 10}},
     "acc.yaml: paired: need 0 <= min_seconds <= max_seconds"),
    ({"good": {"parameters": {"ratio_at_most": 1}}}, {"paired": {"precision": 0}},
     "acc.yaml: paired: precision must be in (0, 1), got 0"),
    ({"good": {"parameters": {"ratio_at_most": 1}}}, {"paired": {"seconds": 10}},
     "acc.yaml: paired must be a mapping of min_seconds, max_seconds, precision, "
     "trial_seconds"),
    ({"good": {"parameters": {"ratio_at_most": 1}}}, {"paired": {"max_seconds": "long"}},
     "acc.yaml: paired: max_seconds must be a number, got 'long'"),
])
def test_a_bad_criterion_is_one_line_naming_file_and_path(acceptance, changes, message):
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        suite_with(acceptance, **changes)
    assert "\n" not in str(info.value)


def test_a_variant_of_a_model_without_a_plain_variant_has_no_baseline():
    variants = BASE_SUITE["variants"] | {
        "tiny-int8": {"model": "shape:gpt2:n_layer=1,n_embd=32,n_head=2,n_positions=64",
                      "recipe": INT8}}
    del variants["tiny"]
    with pytest.raises(UsageError, match=re.escape(
            "acceptance.tiny-int8: variant tiny-int8 has no baseline (no variant of model "
            "shape:gpt2:n_layer=1,n_embd=32,n_head=2,n_positions=64 without a recipe)")):
        suite_with({"tiny-int8": {"parameters": {"ratio_at_most": 1}}}, variants=variants)


def test_valid_criteria_are_kept_and_recorded_only_when_given():
    suite = suite_with({"good": {"perplexity.perplexity": {"non_inferior": 0.02},
                                 "bytes_on_disk": {"ratio_at_most": 0.6},
                                 "decode_ms_per_token": {"speedup_at_least": 1.5}}},
                       paired={"min_seconds": 1, "max_seconds": 5})
    assert suite.acceptance == {"good": {"perplexity.perplexity": {"non_inferior": 0.02},
                                         "bytes_on_disk": {"ratio_at_most": 0.6},
                                         "decode_ms_per_token": {"speedup_at_least": 1.5}}}
    assert suite.paired == {"min_seconds": 1.0, "max_seconds": 5.0}
    assert suite.to_dict()["acceptance"] == suite.acceptance
    plain = parse_suite(BASE_SUITE, "acc.yaml")
    assert plain.acceptance == {} and plain.paired == {}
    # a suite without criteria is recorded (suite.json) as before they existed: resumable
    assert "acceptance" not in plain.to_dict() and "paired" not in plain.to_dict()


def test_the_example_suite_states_criteria():
    from pathlib import Path

    suite = load_suite(Path(__file__).parent.parent / "bench" / "suites" /
                       "compress-reference.yaml")
    assert suite.acceptance["ort-int8"]["decode_ms_per_token"] == {"speedup_at_least": 1.5}
    assert suite.paired["max_seconds"] == 30.0


# ---- a hand-made run ---------------------------------------------------------------------

N_TEXTS = 12
BASE_NLL = [math.log(40.0) * 100 * (1 + 0.05 * ((i % 5) - 2)) for i in range(N_TEXTS)]
NAMES = ["get_name", "set_value", "read_file", "parse_args", "to_dict", "load_json",
         "write_text", "make_dir", "find_all", "run_once"]


def ppl_of(nlls) -> float:
    return math.exp(sum(nlls) / (100 * len(nlls)))


def ppl_examples(extra: float) -> list[dict]:
    """Per-text records: every text of 100 tokens, its NLL plus ``extra`` nats."""
    return [{"task": "perplexity", "id": f"lm-{i}", "nll_nats": nll + extra, "tokens": 100,
             "bytes": 400} for i, nll in enumerate(BASE_NLL)]


def f1_examples(wrong: int) -> list[dict]:
    """Ten method names, the first ``wrong`` of them predicted with no subtoken right."""
    return [{"task": "method_name", "id": f"mn-{i}", "prediction": "xyz_qqq" if i < wrong
             else name, "reference": name} for i, name in enumerate(NAMES)]


def f1_of(wrong: int) -> float:
    tp, fp, fn = 2 * (10 - wrong), 2 * wrong, 2 * wrong  # two subtokens per name
    p, r = tp / (tp + fp), tp / (tp + fn)
    return 100 * 2 * p * r / (p + r)


def _scores(ppl_extra, wrong) -> dict:
    out = {}
    if ppl_extra is not None:
        v = ppl_of([n + ppl_extra for n in BASE_NLL])
        out["perplexity"] = QualityScore(
            "perplexity", "1", "perplexity", v, None, False,
            {"perplexity": Score(v, None, False)}, N_TEXTS, 0.1,
            task_spec={"kind": "perplexity", "metric_list": [
                {"metric": "perplexity", "higher_is_better": False}]})
    if wrong is not None:
        v = f1_of(wrong)
        out["method_name"] = QualityScore(
            "method_name", "1", "f1", v, None, True, {"f1": Score(v, None, True)}, 10, 0.1,
            task_spec={"kind": "generate", "metric_list": [
                {"metric": "f1", "higher_is_better": True}]})
    return out


# variant -> (ppl extra nats per text, wrong names, parameters, bytes on disk)
CELLS = {"base": (0.0, 0, 1000, 4000), "good": (0.2, 1, 600, 1000),
         "worse": (5.0, 0, 1000, 4000), "partial": (0.0, None, None, None)}


def write_run(run_dir, base_status="ok", broken=True):
    """Cells of ``CELLS`` on cpu (``broken--cpu`` failed), every cuda cell skipped."""
    results = []
    cells = list(CELLS.items()) + ([("broken", (None,) * 4)] if broken else [])
    for variant, (extra, wrong, params, size) in cells:
        recipe = [] if variant == "base" else INT8
        for device in ("cpu", "cuda"):
            head = CellInfo(f"{variant}--{device}", variant, "reference", recipe, device,
                            backend="torch", artifact=None if variant == "base"
                            else f"/cache/{variant}")
            status = base_status if variant == "base" else "ok"
            if device == "cuda":
                res, examples = CellResult(head, "skipped", reason="no CUDA GPU on this "
                                           "machine"), []
            elif variant == "broken" or status == "failed":
                res, examples = CellResult(head, "failed", reason="killed by SIGKILL"), []
            else:
                memory = Memory(parameters=params, model_bytes_on_disk=size) if params else None
                res = CellResult(head, "ok", memory=memory, quality=_scores(extra, wrong))
                examples = ppl_examples(extra) + (f1_examples(wrong) if wrong is not None
                                                  else [])
            write_cell(run_dir, res, examples)
            results.append(res.to_dict())
    return results


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "run" / "cells").mkdir(parents=True)
    write_run(tmp_path / "run")
    return tmp_path / "run"


def by_key(checks):
    return {(c.variant, c.device, c.metric): c for c in checks}


def test_quality_size_failed_and_skipped_criteria(run_dir):
    suite = suite_with({
        "good": {"perplexity.perplexity": {"non_inferior": 0.02},
                 "bytes_on_disk": {"ratio_at_most": 0.25},
                 "parameters": {"ratio_at_most": 0.59}},
        "worse": {"perplexity.perplexity": {"non_inferior": 0.02}},
        "partial": {"method_name.f1": {"no_significant_loss": 0.05},
                    "parameters": {"ratio_at_most": 1}},
        "broken": {"perplexity.perplexity": {"non_inferior": 0.5}}})
    said = []
    checks = evaluate_acceptance(suite, run_dir, say=said.append)
    got = by_key(checks)
    assert len(checks) == 7 * 2  # every criterion on both devices

    good = got[("good", "cpu", "perplexity.perplexity")]
    want = ppl_of([n + 0.2 for n in BASE_NLL]) - ppl_of(BASE_NLL)  # ~ +0.08, 0.2%
    assert good.status == "pass" and good.value == pytest.approx(want, rel=1e-9)
    assert good.baseline == "base" and good.criterion == "non_inferior"
    assert good.paired.allowance == pytest.approx(0.02 * ppl_of(BASE_NLL))
    assert good.ci95[1] <= good.paired.allowance
    worse = got[("worse", "cpu", "perplexity.perplexity")]
    assert worse.status == "fail" and worse.value == pytest.approx(
        ppl_of([n + 5 for n in BASE_NLL]) - ppl_of(BASE_NLL), rel=1e-9)  # ~ +2.05, 5%
    assert "interval's bad end" in worse.why

    size = got[("good", "cpu", "bytes_on_disk")]
    assert size.status == "pass" and size.value == 0.25  # 1000 / 4000: at the limit
    params = got[("good", "cpu", "parameters")]
    assert params.status == "fail" and params.value == 0.6
    assert params.why == "parameters 600 / 1,000 = 0.6000 > 0.59"

    missing = got[("partial", "cpu", "method_name.f1")]
    assert missing.status == "fail" and missing.why == "cell partial--cpu has no " \
                                                             "method_name.f1"
    no_memory = got[("partial", "cpu", "parameters")]
    assert no_memory.status == "fail" and no_memory.why == "cell partial--cpu has no " \
                                                                 "parameters"
    broken = got[("broken", "cpu", "perplexity.perplexity")]
    assert broken.status == "fail" and broken.why == "cell broken--cpu failed: killed " \
                                                           "by SIGKILL"
    for c in checks:
        if c.device == "cuda":
            assert c.status == "skipped" and c.why == (
                f"cells {c.variant}--cuda and base--cuda skipped: no CUDA GPU on this "
                "machine")

    assert said[-1] == "acceptance: FAIL (5 of 14; 7 skipped)"
    assert sum(s.startswith("acceptance: FAIL ") for s in said) == 6
    data = json.loads((run_dir / "acceptance.json").read_text())
    assert data["verdict"] == "fail" and data["line"] == said[-1]
    assert [c["status"] for c in data["criteria"]] == [c.status for c in checks]
    assert data["criteria"] == [c.to_dict() for c in checks]
    md = (run_dir / "acceptance.md").read_text()
    assert md.rstrip().endswith("acceptance: FAIL (5 of 14; 7 skipped)")
    assert "| good | base | cpu | bytes_on_disk | ratio_at_most 0.25 | PASS | 0.250 |" in md


@pytest.mark.parametrize("criterion, status", [("no_significant_loss", "pass"),
                                               ("non_inferior", "fail")])
def test_significance_passes_a_loss_non_inferiority_cannot_rule_out(run_dir, criterion,
                                                                    status):
    # one of ten names lost: f1 100 -> 90, a loss of 10 against an allowance of 5; in a
    # third of the resamples that name is not drawn, so the interval of the loss reaches 0
    suite = suite_with({"good": {"method_name.f1": {criterion: 0.05}}}, devices=["cpu"])
    (check,) = evaluate_acceptance(suite, run_dir, say=lambda _: None)
    assert check.value == pytest.approx(f1_of(1) - 100.0) == pytest.approx(-10.0)
    assert check.paired.allowance == pytest.approx(5.0)
    assert check.paired.degradation_ci95[0] == 0.0
    assert check.paired.degradation_ci95[1] > 5.0
    assert check.status == status


def test_a_failed_baseline_cell_fails_every_criterion_closed(tmp_path):
    (tmp_path / "cells").mkdir()
    write_run(tmp_path, base_status="failed", broken=False)
    suite = suite_with({"good": {"perplexity.perplexity": {"non_inferior": 0.5},
                                 "parameters": {"ratio_at_most": 10}}}, devices=["cpu"])
    said = []
    checks = evaluate_acceptance(suite, tmp_path, say=said.append)
    assert [(c.status, c.why) for c in checks] == [
        ("fail", "cell base--cpu failed: killed by SIGKILL")] * 2
    assert said[-1] == "acceptance: FAIL (2 of 2)"


def test_a_passing_run_says_pass(run_dir):
    suite = suite_with({"good": {"perplexity.perplexity": {"non_inferior": 0.02}}},
                       devices=["cpu"])
    said = []
    evaluate_acceptance(suite, run_dir, say=said.append)
    assert said == ["acceptance: PASS (1 criterion)"]
    assert json.loads((run_dir / "acceptance.json").read_text())["verdict"] == "pass"


# ---- latency: the A/B stood in for ------------------------------------------------------

class FakeResult:
    def __init__(self, scenario):
        self.scenario = scenario

    def to_dict(self):
        ratios = {"decode": {"decode_ms_per_token": {
                      "ratio": 0.5, "ci95": [0.4, 0.625], "baseline": 4.0, "candidate": 2.0}},
                  "generate": {
                      "generate_ms": {"ratio": 1.0, "ci95": [0.99, 1.01], "baseline": 9.0,
                                      "candidate": 9.0},
                      "ttft_ms": {"ratio": 1.0, "ci95": [0.98, 1.05], "baseline": 3.0,
                                  "candidate": 3.0},
                      "tpot_ms": {"ratio": 0.95, "ci95": [0.9, 1.0], "baseline": 1.0,
                                  "candidate": 0.95}}}[self.scenario]
        return {"scenario": self.scenario, "ratios": ratios, "pairs": 12, "seconds": 3.0,
                "verdict": "no change", "warnings": ["stand-in"], "fingerprints": {}}


@pytest.fixture
def fake_ab(monkeypatch):
    calls = []

    def fake(baseline, candidate, config, slowdown=0.0, show_progress=False):
        calls.append((baseline, candidate, config))
        return FakeResult(config.scenario)

    monkeypatch.setattr("slimbench.bench.measure.paired.paired_compare", fake)
    return calls


@pytest.mark.parametrize("speedup, slowdown, status", [
    (1.6, 0.05, "pass"),  # speedup's low end 1 / 0.625 = 1.6; ratio's high end 1.05: limits
    (1.8, 0.04, "fail"),  # the point speedup 2.0 >= 1.8 and ratio 1.0 <= 1.04: ends decide
])
def test_latency_criteria_decide_on_the_interval_ends(run_dir, fake_ab, speedup, slowdown,
                                                      status):
    suite = suite_with({"good": {"decode_ms_per_token": {"speedup_at_least": speedup},
                                 "ttft_ms": {"slowdown_at_most": slowdown},
                                 "tpot_ms": {"speedup_at_least": 1.0}}},
                       devices=["cpu"], threads=2,
                       paired={"min_seconds": 2, "max_seconds": 7, "precision": 0.05})
    got = by_key(evaluate_acceptance(suite, run_dir, say=lambda _: None))
    decode = got[("good", "cpu", "decode_ms_per_token")]
    assert decode.status == status
    assert decode.value == 2.0 and decode.ci95 == (1.6, 2.5)
    ttft = got[("good", "cpu", "ttft_ms")]
    assert ttft.status == status and ttft.value == 1.0 and ttft.ci95 == (0.98, 1.05)
    tpot = got[("good", "cpu", "tpot_ms")]  # low end 1 / 1.0 = 1.0 >= 1.0
    assert tpot.status == "pass" and tpot.warnings == ["stand-in"]
    assert tpot.comparison == ttft.comparison == {"variant": "good", "device": "cpu",
                                                        "scenario": "generate"}
    # one A/B per scenario, shared by ttft and tpot; the lengths from the suite's latency
    assert [(b, c, cfg.scenario, cfg.length, cfg.new_tokens) for b, c, cfg in fake_ab] == [
        ("reference", "/cache/good", "decode", 24, 4),
        ("reference", "/cache/good", "generate", 8, 4)]
    for _, _, cfg in fake_ab:
        assert (cfg.device, cfg.threads, cfg.min_seconds, cfg.max_seconds, cfg.precision) == (
            "cpu", 2, 2.0, 7.0, 0.05)
    data = json.loads((run_dir / "acceptance.json").read_text())
    assert [c["scenario"] for c in data["comparisons"]] == ["decode", "generate"]
    assert data["comparisons"][0]["result"]["ratios"]["decode_ms_per_token"]["ratio"] == 0.5


def test_an_ab_that_fails_fails_its_criteria_and_skipped_cells_time_nothing(
        run_dir, monkeypatch):
    calls = []

    def broken(baseline, candidate, config, **_):
        calls.append(config.device)
        raise SlimbenchError("worker died: killed by SIGKILL")

    monkeypatch.setattr("slimbench.bench.measure.paired.paired_compare", broken)
    suite = suite_with({"good": {"prefill_ms": {"slowdown_at_most": 0.1}}})
    got = by_key(evaluate_acceptance(suite, run_dir, say=lambda _: None))
    assert got[("good", "cpu", "prefill_ms")].status == "fail"
    assert got[("good", "cpu", "prefill_ms")].why == ("the prefill A/B failed: worker died: "
                                                         "killed by SIGKILL")
    assert got[("good", "cuda", "prefill_ms")].status == "skipped"
    assert calls == ["cpu"]


# ---- the CLI and the report --------------------------------------------------------------

def _cli_run(tmp_path, monkeypatch, acceptance, broken):
    suite = BASE_SUITE | {"acceptance": acceptance, "devices": ["cpu"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))

    def fake_run_suite(suite, run_dir, **_):
        (run_dir / "cells").mkdir(parents=True)
        return [CellResult.from_dict(r) for r in write_run(run_dir, broken=broken)
                if r["cell"]["device"] == "cpu"]

    monkeypatch.setattr("slimbench.bench.orchestrate.runner.run_suite", fake_run_suite)
    out = tmp_path / "run"
    return main(["run", str(tmp_path / "s.yaml"), "--out", str(out)]), out


@pytest.mark.parametrize("criterion, broken, code", [
    ({"ratio_at_most": 0.6}, False, 0),  # passes
    ({"ratio_at_most": 0.5}, False, 1),  # fails: GateFailed
    ({"ratio_at_most": 0.5}, True, 3),  # a cell failed as well: CellsFailed comes first
])
def test_run_exit_codes_and_report_section(tmp_path, monkeypatch, capsys, criterion, broken,
                                           code):
    rc, out = _cli_run(tmp_path, monkeypatch, {"good": {"parameters": criterion}}, broken)
    stdout, err = capsys.readouterr()
    assert rc == code
    line = "acceptance: PASS (1 criterion)" if code == 0 else "acceptance: FAIL (1 of 1)"
    assert line in stdout.splitlines()
    if code == 1:
        assert err.startswith("slimbench: error: acceptance criteria failed: good cpu "
                              "parameters ratio_at_most 0.5; see ")
        assert "acceptance: FAIL good vs base on cpu: parameters ratio_at_most 0.5: " \
               "parameters 600 / 1,000 = 0.6000 > 0.5" in stdout
    if code == 3:
        assert "cells failed (broken--cpu)" in err
    html = (out / "report.html").read_text()
    assert '<table id="acceptance">' in html and line in html
    assert html.index('<table id="acceptance">') < html.index('<table id="summary">')
    assert "<script" not in html


def test_report_of_a_run_without_criteria_has_no_acceptance_section(run_dir):
    from slimbench.reports.html import render_html

    html = render_html(run_dir, "r", "base").read_text()
    assert "Acceptance" not in html and '<table id="summary">' in html


# ---- end to end --------------------------------------------------------------------------

E2E = """
name: acc-e2e
variants:
  base: {model: reference}
  int8: {model: reference, recipe: [torch_dynamic_int8]}
devices: [cpu]
threads: 1
latency: {prefill: [16], decode_contexts: [16], new_tokens: 4, generate_prompt: 8, repeats: 2,
          min_seconds: 0}
tasks: [perplexity, method_name]
task_limit: 3
perplexity_limit: 3
timeout: 600
acceptance:
  int8:
    parameters: {ratio_at_most: 1.0}
    perplexity.perplexity: {non_inferior: 0.5}
    decode_ms_per_token: {speedup_at_least: 100}
paired: {min_seconds: 0, max_seconds: 3, trial_seconds: 0.02}
"""


@pytest.mark.slow  # builds an int8 artifact, runs two cells and one paired A/B
def test_a_real_run_judges_its_criteria(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(E2E)
    out = tmp_path / "runs" / "r"
    rc = main(["run", str(tmp_path / "s.yaml"), "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 1, err
    data = json.loads((out / "acceptance.json").read_text())
    status = {c["metric"]: c["status"] for c in data["criteria"]}
    assert status == {"parameters": "pass", "perplexity.perplexity": "pass",
                      "decode_ms_per_token": "fail"}
    decode = next(c for c in data["criteria"] if c["metric"] == "decode_ms_per_token")
    assert 0 < decode["ci95"][0] < 100 and decode["ci95"][0] <= decode["value"]
    (ab,) = data["comparisons"]
    assert ab["result"]["pairs"] >= 10 and ab["config"]["length"] == 16
    assert ab["result"]["baseline"] == "reference" and ab["result"]["candidate"].endswith(
        "torch_dynamic_int8")
    assert data["line"] == "acceptance: FAIL (1 of 3)" and data["line"] in stdout
    assert "acceptance criteria failed: int8 cpu decode_ms_per_token speedup_at_least 100" \
        in err
    assert '<table id="acceptance">' in (out / "report.html").read_text()


# ---- one verdict type: the gate's checks and the acceptance criteria -----------------------

def test_gate_and_acceptance_give_the_same_check_type_and_it_round_trips(run_dir):
    """Both verdicts are ``slimbench.schema.Check``; ``to_dict`` is what acceptance.json holds
    and reads back as the same check (a paired test and a re-measured latency included)."""
    import dataclasses

    from slimbench.reports.evidence import load_evidence
    from slimbench.reports.gate import compare, load_policy
    from slimbench.reports.table import load_rows
    from slimbench.schema import Check, PairedLatency, PairedTest

    suite = suite_with({"good": {"perplexity.perplexity": {"non_inferior": 0.02},
                                 "parameters": {"ratio_at_most": 0.59}},
                        "partial": {"method_name.f1": {"no_significant_loss": 0.05}}})
    accepted = evaluate_acceptance(suite, run_dir, say=lambda _: None)
    evidence = (load_evidence(run_dir), load_evidence(run_dir))
    gated = compare(load_rows(run_dir), load_rows(run_dir), load_policy(None),
                    evidence=evidence)
    assert {type(c) for c in accepted} == {type(c) for c in gated} == {Check}
    assert {c.status for c in gated} == {"pass"}
    ppl = next(c for c in gated if c.variant == "good" and c.metric == "perplexity.perplexity")
    assert isinstance(ppl.paired, PairedTest) and ppl.paired.delta == 0.0
    assert ppl.baseline_value == ppl.candidate_value and ppl.why.startswith(
        "perplexity: identical on all 12 paired examples")
    good = next(c for c in accepted if c.device == "cpu" and c.criterion == "non_inferior")
    assert isinstance(good.paired, PairedTest) and good.value == good.paired.delta
    timed = dataclasses.replace(gated[0], paired_latency=PairedLatency(1.25, (1.1, 1.4), 12,
                                                                       3.0, "decode"))
    for check in [*accepted, *gated, timed]:
        assert Check.from_dict(check.to_dict()) == check
    data = json.loads((run_dir / "acceptance.json").read_text())
    assert data["criteria"] == [c.to_dict() for c in accepted]
    # the fields an acceptance criterion writes; the gate's stay out
    assert set(data["criteria"][0]) == {"variant", "baseline", "device", "metric", "criterion",
                                        "threshold", "value", "ci95", "status", "why",
                                        "paired", "shown"}
    skipped = next(c for c in data["criteria"] if c["status"] == "skipped")
    assert (skipped["value"], skipped["ci95"]) == (None, None) and "kind" not in skipped

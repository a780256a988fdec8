"""`slimbench search`'s space and budget: expansion (counts, order, real lists, duplicates),
every refusal as one line naming the file and entry, the built-in spaces, and the budget
parsed, refused and turned into a suite's acceptance criteria that a suite loads."""

import dataclasses
import re

import pytest
import yaml

from slimbench.bench.orchestrate.search_budget import load_budget, parse_budget
from slimbench.bench.orchestrate.search_space import (
    MAX_CANDIDATES,
    SpaceCandidate,
    default_space,
    default_space_path,
    load_space,
    parse_space,
    space_size,
)
from slimbench.bench.orchestrate.suite import parse_suite
from slimbench.compress.steps import register_step
from slimbench.errors import UsageError


@dataclasses.dataclass(frozen=True)
class SpaceToyConfig:
    """A step with a list-valued parameter (none of the built-in steps has one)."""

    layers: tuple[int, ...] = ()
    scale: float = 1.0


@register_step("space_toy", SpaceToyConfig)
def _apply_space_toy(parent, config, out):  # never run: the space is only parsed
    raise AssertionError("not run")


def labels(cands):
    return [c.label for c in cands]


# ---- expansion -------------------------------------------------------------------------------

def test_expansion_counts_order_and_names():
    space = {"candidates": [
        "torch_dynamic_int8",
        ["export_onnx", "ort_dynamic_int8"],
        [{"export_onnx": {"attention": ["ops", "fused"]}}, "ort_dynamic_int8"],
        ["export_onnx", {"ort_weight_int4": {"algorithm": ["rtn", "hqq"],
                                             "block_size": [32, 128],
                                             "accuracy_level": [0, 4]}}],
        [{"prune_structured": {"ratio": [0.2, 0.3, 0.5]}}, {"distill": {"steps": [200]}},
         "export_onnx", "ort_dynamic_int8"],
        {"prune_unstructured": {"sparsity": 0.5}},  # one step written as a mapping
    ]}
    assert space_size(space) == 1 + 1 + 2 + 8 + 3 + 1
    cands = parse_space(space, "s.yaml", "reference")
    # `export_onnx > ort_dynamic_int8` and its `attention: ops` twin are one candidate
    assert len(cands) == 15
    assert [c.name for c in cands] == [f"c{i:02d}" for i in range(1, 16)]
    assert [c.entry for c in cands] == [1, 2, 3] + [4] * 8 + [5] * 3 + [6]
    assert labels(cands)[:3] == ["torch_dynamic_int8", "export_onnx > ort_dynamic_int8",
                                 "export_onnx(attention=fused) > ort_dynamic_int8"]
    # the first list varies slowest, in the order written
    int4 = [dict(c.steps[1][1]) for c in cands if c.entry == 4]
    assert [(p["algorithm"], p["block_size"], p["accuracy_level"]) for p in int4] == [
        ("rtn", 32, 0), ("rtn", 32, 4), ("rtn", 128, 0), ("rtn", 128, 4),
        ("hqq", 32, 0), ("hqq", 32, 4), ("hqq", 128, 0), ("hqq", 128, 4)]
    # resolved as a suite variant's recipe is: distill's teacher is the input model
    pruned = [c for c in cands if c.entry == 5]
    assert [c.steps[0][1]["ratio"] for c in pruned] == [0.2, 0.3, 0.5]
    assert pruned[0].steps[1] == ("distill", {"steps": 200, "teacher": "reference"})
    assert pruned[0].recipe() == [{"prune_structured": {"ratio": 0.2}},
                                  {"distill": {"steps": 200, "teacher": "reference"}},
                                  "export_onnx", "ort_dynamic_int8"]
    assert cands[-1].to_dict() == {"name": "c15", "entry": 6,
                                   "label": "prune_unstructured(sparsity=0.5)",
                                   "recipe": [{"prune_unstructured": {"sparsity": 0.5}}]}


def test_names_are_padded_to_the_width_of_the_count():
    few = parse_space({"candidates": ["torch_dynamic_int8"]}, "s", "reference")
    assert few == [SpaceCandidate("c01", (("torch_dynamic_int8", {}),), 1)]
    many = parse_space({"candidates": [{"prune_unstructured": {
        "sparsity": [round(0.05 + i * 0.008, 3) for i in range(101)]}}]}, "s", "reference")
    assert [c.name for c in many][:2] == ["c001", "c002"] and many[-1].name == "c101"


def test_a_list_value_is_written_as_a_list_of_lists():
    cands = parse_space({"candidates": [
        {"space_toy": {"layers": [[0, 1], [2]], "scale": [1.0, 2.0]}},
        {"space_toy": {"layers": [[3, 4, 5]]}}]}, "s", "reference")
    assert [c.steps[0][1] for c in cands] == [
        {"layers": [0, 1], "scale": 1.0}, {"layers": [0, 1], "scale": 2.0},
        {"layers": [2], "scale": 1.0}, {"layers": [2], "scale": 2.0}, {"layers": [3, 4, 5]}]
    # a flat list expands: each element is an int, not the list[int] the step takes
    with pytest.raises(UsageError, match=re.escape(
            "s: candidates[1] (space_toy(layers=0)): recipe step 1: step space_toy: layers "
            "must be a list, got 0")):
        parse_space({"candidates": [{"space_toy": {"layers": [0, 1]}}]}, "s", "reference")


def test_duplicates_are_dropped_keeping_the_first():
    cands = parse_space({"candidates": [
        [{"export_onnx": {"attention": ["fused", "ops", "fused"]}}, "ort_dynamic_int8"],
        ["export_onnx", "ort_dynamic_int8"],  # = attention ops (the default)
        "torch_dynamic_int8",
        [{"export_onnx": {"opset": 18}}, {"ort_dynamic_int8": {"per_channel": False}}],
        {"torch_dynamic_int8": {"include_lm_head": [False, True]}},
    ]}, "s", "reference")
    assert labels(cands) == ["export_onnx(attention=fused) > ort_dynamic_int8",
                             "export_onnx(attention=ops) > ort_dynamic_int8",
                             "torch_dynamic_int8", "torch_dynamic_int8(include_lm_head=true)"]
    assert [c.entry for c in cands] == [1, 1, 3, 5]
    assert [c.name for c in cands] == ["c01", "c02", "c03", "c04"]


def test_the_model_decides_the_chain():
    onnx_only = {"candidates": ["ort_dynamic_int8"]}
    with pytest.raises(UsageError, match=re.escape(
            "s: candidates[1]: step ort_dynamic_int8 needs an ONNX artifact; 'reference' is "
            "a float32 torch model")):
        parse_space(onnx_only, "s", "reference")


# ---- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("space, message", [
    ({"candidates": []}, "s.yaml: the space is empty: 'candidates' lists nothing"),
    ({"candidates": None}, "s.yaml: 'candidates' must be a list of steps or chains"),
    ({}, "s.yaml: 'candidates' must be a list of steps or chains"),
    (["torch_dynamic_int8"], "s.yaml: expected a mapping with a 'candidates' list"),
    ({"candidates": ["torch_dynamic_int8"], "budget": 1},
     "s.yaml: unknown key(s) budget (known: candidates, max_candidates)"),
    ({"candidates": ["torch_dynamic_int8"], "max_candidates": 0},
     "s.yaml: max_candidates must be an integer >= 1, got 0"),
    ({"candidates": [[]]}, "s.yaml: candidates[1]: an empty chain; give a step name or a list"),
    ({"candidates": ["torch_dynamic_int8", ["export_onnx", "ort_dynamic_int9"]]},
     "s.yaml: candidates[2]: step 2: unknown recipe step 'ort_dynamic_int9'; did you mean "
     "'ort_dynamic_int8'?"),
    ({"candidates": [[{"export_onnx": {"attention": "fused"}, "x": 1}]]},
     "s.yaml: candidates[1]: step 1 must be a step name or {name: {param: value}}"),
    ({"candidates": [{"export_onnx": "fused"}]},
     "s.yaml: candidates[1]: step 1 (export_onnx): parameters must be a mapping"),
    ({"candidates": [[5]]}, "s.yaml: candidates[1]: step 1 must be a step name"),
    ({"candidates": [["torch_dynamic_int8", "export_onnx"]]},
     "s.yaml: candidates[1]: step export_onnx needs a float32 torch model; the output of "
     "step 1 (torch_dynamic_int8) is a torch dynamic-int8 artifact"),
    ({"candidates": [["export_onnx", {"ort_weight_int4": {"algoritm": ["rtn", "hqq"]}}]]},
     "s.yaml: candidates[1] (export_onnx > ort_weight_int4(algoritm=rtn)): recipe step 2: "
     "step ort_weight_int4: unknown parameter(s) algoritm; known: accuracy_level,"),
    ({"candidates": ["torch_dynamic_int8", ["export_onnx", {"ort_weight_int4": {
        "algorithm": ["rtn", "hqq"], "symmetric": True}}]]},
     "s.yaml: candidates[2] (export_onnx > ort_weight_int4(algorithm=hqq, symmetric=true)): "
     "recipe step 2: step ort_weight_int4: hqq is asymmetric by design"),
    ({"candidates": [["export_onnx", {"ort_weight_int4": {"block_size": 48}}]]},
     "s.yaml: candidates[1]: recipe step 2: step ort_weight_int4: block_size must be one of "
     "16, 32, 64, 128, 256, got 48"),
    ({"candidates": [{"prune_structured": {"ratio": "half"}}]},
     "s.yaml: candidates[1]: recipe step 1: step prune_structured: ratio must be"),
    ({"candidates": [{"prune_structured": {"ratio": []}}]},
     "s.yaml: candidates[1]: step 1 (prune_structured): parameter ratio is an empty list"),
    ({"candidates": [{"prune_unstructured": {"sparsity": [0.1, 0.2, 0.3]}}],
      "max_candidates": 2},
     "s.yaml: the space expands to 3 candidates, more than max_candidates (2); narrow its "
     "parameter lists or raise max_candidates"),
    ({"candidates": [{"prune_unstructured": {"sparsity": [0.1, 0.2]}},
                     ["export_onnx", {"ort_weight_int4": {
                         "block_size": [16, 32, 64, 128, 256], "calib_samples": list(
                             range(1, 101)), "calib_seq_len": list(range(2, 102))}}]]},
     f"s.yaml: the space expands to 50,002 candidates, more than max_candidates "
     f"({MAX_CANDIDATES})"),
])
def test_a_bad_space_is_one_line_naming_file_and_entry(space, message):
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        parse_space(space, "s.yaml", "reference")
    assert "\n" not in str(info.value)


def test_max_candidates_counts_after_duplicates_are_dropped():
    space = {"candidates": [{"torch_dynamic_int8": {"include_lm_head": [False, False, True]}}],
             "max_candidates": 2}
    assert space_size(space) == 3
    assert len(parse_space(space, "s", "reference")) == 2
    with pytest.raises(UsageError, match=re.escape("s: the space expands to 2 candidates, "
                                                   "more than max_candidates (1)")):
        parse_space(space, "s", "reference", max_candidates=1)


# ---- the built-in spaces ---------------------------------------------------------------------

def test_the_default_cpu_space_covers_every_cpu_step():
    cands = default_space("cpu")
    assert len(cands) == 64 <= 70
    raw = yaml.safe_load(default_space_path("cpu").read_text())
    assert space_size(raw) == 64
    steps = {name for c in cands for name, _ in c.steps}
    assert steps == {"torch_dynamic_int8", "export_onnx", "ort_dynamic_int8",
                     "ort_static_int8", "ort_weight_int4", "ort_optimize", "torch_cast",
                     "prune_structured", "prune_unstructured", "distill", "smoothquant",
                     "awq"}
    params = [(n, p) for c in cands for n, p in c.steps]
    assert {p["method"] for n, p in params if n == "prune_unstructured"} == {
        "magnitude", "wanda", "sparsegpt"}
    # AWQ's scales are searched for the int4 block that follows it
    for c in cands:
        awq = dict(c.steps).get("awq")
        if awq:
            assert awq["block_size"] == dict(c.steps)["ort_weight_int4"]["block_size"]
    assert {p["method"] for n, p in params if n == "ort_static_int8"} == {
        "minmax", "entropy", "percentile"}
    # after SmoothQuant, the two calibrations that do best on the reference
    assert {dict(c.steps)["ort_static_int8"]["method"] for c in cands
            if "smoothquant" in dict(c.steps)} == {"minmax", "percentile"}
    assert {p["algorithm"] for n, p in params if n == "ort_weight_int4"} == {
        "rtn", "gptq", "hqq"}
    assert {p.get("attention") for n, p in params if n == "export_onnx"} >= {"ops", "fused"}
    # cheap and likely good first: ORT int8, torch int8 and fast int4 lead; training is last
    assert labels(cands)[0] == "export_onnx(attention=ops) > ort_dynamic_int8"
    assert "torch_dynamic_int8" in labels(cands)[:3]
    first_distill = min(i for i, c in enumerate(cands) if c.steps[0][0] == "distill"
                        or any(n == "distill" for n, _ in c.steps))
    assert all(not any(n == "distill" for n, _ in c.steps) for c in cands[:first_distill])
    assert first_distill > 40
    # the known quality breaker is in it (structured 0.5 without distillation)
    assert "prune_structured(ratio=0.5)" in labels(cands)
    assert load_space(default_space_path("cpu")) == cands


def test_the_default_cuda_space_has_only_what_runs_on_cuda():
    cands = default_space("cuda:0")
    assert default_space_path("cuda") == default_space_path("cuda:1")
    steps = {name for c in cands for name, _ in c.steps}
    assert not steps & {"torch_dynamic_int8", "ort_dynamic_int8", "ort_static_int8"}
    assert {"torch_cast", "ort_fp16", "ort_weight_int4"} <= steps
    params = [(n, p) for c in cands for n, p in c.steps]
    assert {p.get("dtype") for n, p in params if n == "torch_cast"} == {"float16"}
    assert {p.get("accuracy_level", 0) for n, p in params if n == "ort_weight_int4"} == {0}
    assert all(p.get("device") == "cuda" for n, p in params if n == "distill")
    # ORT's CUDA GroupQueryAttention takes fp16 only: a fused graph is always cast
    for c in cands:
        names = [n for n, _ in c.steps]
        for i, (n, p) in enumerate(c.steps):
            if n == "export_onnx" and p.get("attention") == "fused":
                assert "ort_fp16" in names[i:]
    with pytest.raises(UsageError, match="device 'tpu': use cpu, cuda or cuda:N"):
        default_space("tpu")


# ---- the budget ------------------------------------------------------------------------------

BUDGET = """
perplexity.perplexity: {non_inferior: 0.02}
next_line.acc: {no_significant_loss: 2, mode: absolute}
model_bytes_on_disk: {ratio_at_most: 0.5}
peak_rss_bytes: {ratio_at_most: 0.8}
decode_ms_per_token: {speedup_at_least: 1.2}
"""


def test_budget_parses(tmp_path):
    path = tmp_path / "budget.yaml"
    path.write_text(BUDGET)
    b = load_budget(path)
    assert b.source == str(path)
    assert [(q.key, q.criterion, q.test, q.allowance, q.mode, q.higher_is_better)
            for q in b.quality] == [
        ("perplexity.perplexity", "non_inferior", "non_inferiority", 0.02, "relative", False),
        ("next_line.acc", "no_significant_loss", "significance", 2.0, "absolute", True)]
    assert [(c.metric, c.field, c.ratio) for c in b.ceilings] == [
        ("model_bytes_on_disk", "model_bytes_on_disk", 0.5), ("peak_rss_bytes",
                                                              "peak_rss_bytes", 0.8)]
    assert b.min_speedup == 1.2 and b.speedup_metric == "decode_ms_per_token"
    assert b.max_slowdown == {}
    assert [q.describe() for q in b.quality] == [
        "perplexity.perplexity non_inferior 0.02", "next_line.acc no_significant_loss 2 "
        "absolute"]
    assert b.tasks == ("perplexity", "next_line")
    assert b.to_acceptance() == {
        "perplexity.perplexity": {"non_inferior": 0.02},
        "next_line.acc": {"no_significant_loss": 2.0, "mode": "absolute"},
        "model_bytes_on_disk": {"ratio_at_most": 0.5},
        "peak_rss_bytes": {"ratio_at_most": 0.8},
        "decode_ms_per_token": {"speedup_at_least": 1.2}}
    assert b.to_dict()["tasks"] == ["perplexity", "next_line"]
    # a zero allowance (no loss at all) and an alias
    z = parse_budget({"perplexity.perplexity": {"no_significant_loss": 0},
                      "bytes_on_disk": {"ratio_at_most": 1}})
    assert z.quality[0].allowance == 0.0 and z.ceilings[0].field == "model_bytes_on_disk"
    assert z.min_speedup is None and z.speedup_metric is None
    s = parse_budget({"perplexity.perplexity": {"non_inferior": 0.02},
                      "prefill_ms": {"slowdown_at_most": 0.05}})
    assert s.max_slowdown == {"prefill_ms": 0.05} and s.to_acceptance()["prefill_ms"] == {
        "slowdown_at_most": 0.05}


@pytest.mark.parametrize("data, message", [
    (None, "b.yaml: expected a mapping of metric: {criterion: number}"),
    ({}, "b.yaml: expected a mapping of metric: {criterion: number}"),
    ({"model_bytes_on_disk": {"ratio_at_most": 0.5}},
     "b.yaml: no quality criterion; a budget needs at least one"),
    ({"perplexty.perplexity": {"non_inferior": 0.02}},
     "b.yaml: perplexty.perplexity: unknown task 'perplexty'; did you mean 'perplexity'?"),
    ({"next_line.accuracy": {"non_inferior": 0.02}},
     "b.yaml: next_line.accuracy: task next_line has no metric 'accuracy' (its metrics: acc, "
     "acc_norm, macro_f1)"),
    ({"perplexity": {"non_inferior": 0.02}},
     "b.yaml: perplexity: non_inferior needs a quality metric task.metric"),
    ({"decode_ms_per_token": {"non_inferior": 0.02}},
     "b.yaml: decode_ms_per_token: non_inferior needs a quality metric task.metric"),
    ({"perplexity.perplexity": {"non_inferior": -0.01}},
     "b.yaml: perplexity.perplexity: non_inferior must be a number >= 0, got -0.01"),
    ({"perplexity.perplexity": {"non_inferior": float("inf")}},
     "b.yaml: perplexity.perplexity: non_inferior must be a number >= 0, got inf"),
    ({"perplexity.perplexity": {"non_inferior": "2%"}},
     "b.yaml: perplexity.perplexity: non_inferior must be a number >= 0, got '2%'"),
    ({"perplexity.perplexity": {"non_inferior": 0.02, "mode": "percent"}},
     "b.yaml: perplexity.perplexity: mode must be relative (x |baseline|) or absolute"),
    ({"perplexity.perplexity": {"non_inferior": 0.02, "no_significant_loss": 0.02}},
     "b.yaml: perplexity.perplexity: give one criterion of non_inferior"),
    ({"perplexity.perplexity": 0.02},
     "b.yaml: perplexity.perplexity: give one criterion of non_inferior"),
    ({"perplexity.perplexity": {"non_inferior": 0.02},
      "model_bytes_on_disk": {"ratio_at_most": 0}},
     "b.yaml: model_bytes_on_disk: ratio_at_most must be a number > 0, got 0"),
    ({"perplexity.perplexity": {"non_inferior": 0.02},
      "model_bytes_on_disk": {"ratio_at_most": 0.5, "mode": "absolute"}},
     "b.yaml: model_bytes_on_disk: mode applies to the quality criteria (non_inferior, "
     "no_significant_loss) only, not to ratio_at_most"),
    ({"perplexity.perplexity": {"non_inferior": 0.02}, "disk": {"ratio_at_most": 0.5}},
     "b.yaml: disk: ratio_at_most needs a size or memory metric (one of bytes_on_disk,"),
    ({"perplexity.perplexity": {"non_inferior": 0.02}, "decode": {"speedup_at_least": 1.2}},
     "b.yaml: decode: speedup_at_least needs a latency metric (one of"),
    ({"perplexity.perplexity": {"non_inferior": 0.02},
      "decode_ms_per_token": {"speedup_at_least": 1.2}, "prefill_ms": {"speedup_at_least": 2}},
     "b.yaml: prefill_ms: a second speedup_at_least (the first is decode_ms_per_token); the "
     "budget states one least speedup"),
])
def test_a_bad_budget_is_one_line_naming_file_and_entry(data, message):
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        parse_budget(data, "b.yaml")
    assert "\n" not in str(info.value)


def test_the_budget_is_a_suites_acceptance_and_round_trips():
    b = parse_budget(yaml.safe_load(BUDGET), "b.yaml")
    suite = parse_suite({
        "name": "best",
        "variants": {"baseline": {"model": "reference"},
                     "best": {"model": "reference", "recipe": ["export_onnx",
                                                               "ort_dynamic_int8"]}},
        "latency": {"prefill": [16], "decode_contexts": [24], "new_tokens": 4},
        "tasks": list(b.tasks),
        "acceptance": {"best": b.to_acceptance()}}, "best-suite.yaml")
    assert suite.acceptance == {"best": b.to_acceptance()}
    again = parse_suite(yaml.safe_load(yaml.safe_dump(suite.to_dict() | {
        "variants": {"baseline": {"model": "reference"},
                     "best": {"model": "reference", "recipe": ["export_onnx",
                                                               "ort_dynamic_int8"]}}})),
        "suite.json")
    assert again.acceptance == suite.acceptance


# ---- the acceptance criteria's mode ----------------------------------------------------------

def test_an_absolute_mode_reaches_the_paired_test(monkeypatch, tmp_path):
    """``mode: absolute`` is kept by the suite (relative is the default and left out) and
    handed to the paired test; the check records it."""
    from slimbench.bench.orchestrate import acceptance as acc_mod
    from slimbench.bench.orchestrate.acceptance import Criterion, _Judge, markdown

    base = {"name": "m", "variants": {"base": {"model": "reference"},
                                      "q": {"model": "reference",
                                            "recipe": ["torch_dynamic_int8"]}},
            "tasks": ["next_line"]}
    suite = parse_suite(base | {"acceptance": {"q": {
        "next_line.acc": {"no_significant_loss": 2, "mode": "absolute"}}}}, "m")
    assert suite.acceptance == {"q": {"next_line.acc": {"no_significant_loss": 2.0,
                                                        "mode": "absolute"}}}
    plain = parse_suite(base | {"acceptance": {"q": {
        "next_line.acc": {"no_significant_loss": 0.02, "mode": "relative"}}}}, "m")
    assert plain.acceptance == {"q": {"next_line.acc": {"no_significant_loss": 0.02}}}

    seen = {}

    def fake_paired_test(*args):
        seen["mode"], seen["allowed"] = args[7], args[8]
        raise UsageError("stop here")

    import slimbench.tasks.paired as paired
    monkeypatch.setattr(paired, "paired_test", fake_paired_test)

    class Res:
        def __init__(self, variant):
            self.cell = type("C", (), {"id": f"{variant}--cpu", "variant": variant})()
            self.quality = {"next_line": type("Q", (), {"metrics": {"acc": type(
                "S", (), {"higher_is_better": True})()}})()}

    class Ev:
        tasks = {"next_line": type("T", (), {"examples": [], "kind": "multiple_choice",
                                             "options": {}})()}

    judge = _Judge(suite, tmp_path, {}, False)
    judge._evidence = {"q--cpu": Ev(), "base--cpu": Ev()}
    crit = Criterion("q", "base", "cpu", "next_line.acc", "no_significant_loss", 2.0,
                     "absolute")
    check = judge.quality(crit, Res("q"), Res("base"))
    assert seen == {"mode": "absolute", "allowed": 2.0}
    assert check.status == "fail" and check.mode == "absolute"
    assert "no_significant_loss 2 absolute" in markdown([check], "m")
    rel = Criterion("q", "base", "cpu", "next_line.acc", "no_significant_loss", 0.02)
    assert judge.quality(rel, Res("q"), Res("base")).mode is None
    assert seen["mode"] == "relative"
    assert acc_mod.rule_parts({"non_inferior": 0.5, "mode": "absolute"}) == (
        "non_inferior", 0.5, "absolute")

"""SmoothQuant and the shared smoothing groups: exact folds on every family, fewer activation
outliers, the alpha search, train-split calibration, the chain into static int8, refusals."""

import copy

import numpy as np
import pytest
import torch

from slimbench.bench.cli import main
from slimbench.compress.loader import load_artifact
from slimbench.compress.recipe import Recipe, run_recipe
from slimbench.compress.smoothing import (
    fold,
    input_stats,
    out_in,
    outlier_ratio,
    require_fp32,
    smoothable_groups,
    smoothed_child,
)
from slimbench.compress.smoothquant import SmoothQuantConfig, smoothquant
from slimbench.compress.steps import STEPS, make_config, run_step
from slimbench.errors import CompressionError, UsageError

EPS32 = float(torch.finfo(torch.float32).eps)
# each weight is rounded twice by a fold (x s, / s); a logit sums such rounding over a few
# dozen products per layer: 64 eps of the logit scale bounds it on any ISA (measured: ~3 eps)
FOLD_TOL = 64 * EPS32
# groups per block: norm -> qkv, v -> out (not under GQA), norm -> MLP, MLP pair (exact ones)
GROUPS_PER_BLOCK = {"gpt2": 3, "llama": 3, "qwen2": 3, "gpt_neox": 3, "opt": 4}


def batches(n=4, length=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4096, size=(1, length)) for _ in range(n)]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids)).logits


def with_outliers(model, factor=20.0):
    """A few large input channels after every norm, as trained models have."""
    with torch.no_grad():
        for g in smoothable_groups(model, ("norm",))[0]:
            g.producer.weight[:3] *= factor
    return model


def assert_same_function(parent, child):
    ids = np.concatenate(batches(2, 24, seed=7))
    a, b = logits(parent, ids), logits(child, ids)
    assert float((a - b).abs().max()) <= FOLD_TOL * float(a.abs().max())


def assert_every_group_changed(parent, child):
    """The fold happened: each consumer's and producer's weights moved."""
    names = {m: n for n, m in child.named_modules()}
    before = dict(parent.named_modules())
    for g in smoothable_groups(child)[0]:
        for mod in (*g.consumers, g.producer):
            assert not torch.equal(mod.weight, before[names[mod]].weight), (g.name, names[mod])


def test_groups_of_every_family(family, make_family_model):
    model = make_family_model(family)
    groups, skipped = smoothable_groups(model)
    assert len(groups) == 2 * GROUPS_PER_BLOCK[family]
    assert [g.kind for g in groups].count("norm") == 4
    for g in groups:  # a group's consumers share one input width
        assert {out_in(c).shape[1] for c in g.consumers} == {g.channels}
        if g.rows is not None:
            assert len(g.rows) == g.channels
    if family == "gpt2":
        assert [g.name for g in groups[:3]] == [
            "transformer.h.0: ln_1 -> attn.c_attn", "transformer.h.0: v -> attn.c_proj",
            "transformer.h.0: ln_2 -> mlp.c_fc"]
        assert "gelu_new is not positively homogeneous" in skipped[0]
    if family in ("llama", "qwen2"):  # 2 KV heads for 4 query heads
        assert all("grouped-query" in s for s in skipped) and len(skipped) == 2


def random_fold(parent):
    child = copy.deepcopy(parent)
    groups = smoothable_groups(child)[0]
    g = torch.Generator().manual_seed(1)
    for group in groups:
        fold(group, torch.empty(group.channels).uniform_(-1, 1, generator=g).exp())
    return child, groups


def test_random_scales_fold_exactly_on_every_family(family, make_family_model):
    parent = make_family_model(family)
    child, _ = random_fold(parent)
    assert_same_function(parent, child)
    assert_every_group_changed(parent, child)


def test_v_to_o_group_without_grouped_query_attention(make_family_model):
    parent = make_family_model("llama", num_key_value_heads=4)
    child, groups = random_fold(parent)
    assert [g.name for g in groups[:2]] == ["model.layers.0: input_layernorm -> "
                                            "self_attn.q_proj, self_attn.k_proj, "
                                            "self_attn.v_proj",
                                            "model.layers.0: v -> self_attn.o_proj"]
    assert_same_function(parent, child)
    assert_every_group_changed(parent, child)


def test_a_wrong_fold_is_caught(make_family_model):
    # the bar above is not loose: scaling consumers without their producer breaks it
    parent = make_family_model("gpt2")
    child = copy.deepcopy(parent)
    with torch.no_grad():
        out_in(smoothable_groups(child)[0][1].consumers[0]).mul_(1.01)
    with pytest.raises(AssertionError):
        assert_same_function(parent, child)
    with pytest.raises(ValueError, match="finite positive"):
        fold(smoothable_groups(child)[0][0], torch.zeros(64))


def test_smoothquant_is_exact_and_reduces_activation_outliers(family, make_family_model):
    parent = with_outliers(make_family_model(family))
    child = copy.deepcopy(parent)
    audit = smoothquant(child, SmoothQuantConfig(alpha=0.5, lm_head=False), batches(), "test")
    assert_same_function(parent, child)
    assert_every_group_changed(parent, child)
    assert audit.groups == 2 * GROUPS_PER_BLOCK[family] == len(audit.group_names)
    # measured again on the child, not read from the audit: the inputs it really sees
    groups = smoothable_groups(child)[0]
    before = [outlier_ratio(s.absmax) for s in input_stats(parent, smoothable_groups(parent)[0],
                                                           batches())]
    after = [outlier_ratio(s.absmax) for s in input_stats(child, groups, batches())]
    for g, b, a in zip(groups, before, after, strict=True):
        if g.kind == "norm":  # where the outliers are: each one shrinks
            assert a < b / 2, g.name
    assert np.mean(after) < np.mean(before)
    assert audit.outlier_ratio_after == pytest.approx(np.mean(after), rel=1e-4)
    assert audit.int8_error_chosen < audit.int8_error_unsmoothed


def test_lm_head_is_untied_and_smoothed(family, make_family_model):
    parent = with_outliers(make_family_model(family))
    child = copy.deepcopy(parent)
    audit = smoothquant(child, SmoothQuantConfig(alpha=0.5, lm_head=True), batches(), "test")
    tied = parent.lm_head.weight is parent.get_input_embeddings().weight
    assert audit.lm_head_untied == tied and tied == (family in ("gpt2", "qwen2", "opt"))
    assert audit.groups == 2 * GROUPS_PER_BLOCK[family] + 1
    assert audit.group_names[-1].endswith("-> lm_head")
    assert child.lm_head.weight is not child.get_input_embeddings().weight
    assert not child.config.tie_word_embeddings
    # the head was scaled, the embedding was not
    assert not torch.equal(child.lm_head.weight, parent.lm_head.weight)
    assert torch.equal(child.get_input_embeddings().weight,
                       parent.get_input_embeddings().weight)
    assert_same_function(parent, child)


def test_alpha_search_scores_every_candidate(make_family_model):
    model = with_outliers(make_family_model("opt"))
    config = SmoothQuantConfig(alpha=None, alphas=[0.2, 0.5, 0.8])
    audit = smoothquant(model, config, batches(), "test")
    errors = audit.int8_error_per_alpha
    assert set(errors) == {"0.2", "0.5", "0.8"} and audit.searched
    assert audit.alpha == float(min(errors, key=errors.get))
    assert audit.int8_error_chosen == min(errors.values()) < audit.int8_error_unsmoothed


def test_calibration_reads_only_the_train_split(family_dirs, tmp_path, monkeypatch):
    import slimbench.tasks.corpus as corpus

    splits, load = [], corpus.load_corpus
    monkeypatch.setattr(corpus, "load_corpus", lambda split, *a, **k: (
        splits.append(split), load(split, *a, **k))[1])
    m = run_step("smoothquant", {"alpha": 0.5, "lm_head": True, "calib_samples": 2,
                                 "calib_seq_len": 16},
                 str(family_dirs["gpt2"]), tmp_path / "sq")
    assert splits and set(splits) == {"train"}
    q = m.report["quantization"]
    assert q["calibration"] == {"samples": 2, "seq_len": 16, "tokens_searched": 32,
                                "source": "corpus train split"}
    assert m.report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert m.report["parity"]["greedy_identical"] == m.report["parity"]["greedy_prompts"]
    # the child loads back as written: its lm_head untied and scaled, the function kept
    parent, child = (load_artifact(str(p)).model for p in (family_dirs["gpt2"], tmp_path / "sq"))
    assert child.lm_head.weight is not child.get_input_embeddings().weight
    assert not torch.equal(child.lm_head.weight, child.get_input_embeddings().weight)
    assert_same_function(parent, child)


def test_chain_into_static_int8(family_dirs, tmp_path):
    recipe = Recipe([("smoothquant", {"alpha": None, "calib_samples": 2, "calib_seq_len": 16}),
                     ("export_onnx", {}), ("ort_static_int8", {"samples": 2, "seq_len": 16})])
    sq, onnx, int8 = run_recipe(recipe, str(family_dirs["llama"]), tmp_path / "r",
                                say=lambda _: None)
    # 3 groups per block, 2 blocks, and (the default) the final norm -> lm_head
    assert sq.report["quantization"]["groups"] == 7 and sq.report["quantization"]["searched"]
    assert sq.report["quantization"]["group_names"][-1].endswith("-> lm_head")
    assert sq.report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert onnx.parent.spec == str(tmp_path / "r" / "01-smoothquant")
    q = int8.report["quantization"]
    assert q["block_matmuls"] == q["block_matmuls_int8"] == 14
    assert q["lm_head"] == "int8" and q["activation_matmuls_int8"] == 0
    assert int8.recipe == ["smoothquant", "export_onnx", "ort_static_int8"]


@pytest.mark.parametrize("params, message", [
    ({"alpha": 1.5}, "alpha must be in [0, 1]"),
    ({"alpha": -0.1}, "alpha must be in [0, 1]"),
    ({"alphas": []}, "alphas must be a non-empty list"),
    ({"alphas": [0.5, 2]}, "alphas must be a non-empty list"),
    ({"groups": "some"}, "groups must be one of norms, all"),
    ({"alpha": "high"}, "alpha must be a number"),
    ({"calib_samples": 0}, "calib_samples must be >= 1"),
])
def test_bad_config_is_refused(params, message):
    with pytest.raises(UsageError, match=f"^step smoothquant: {message}".replace("[", r"\[")):
        make_config(STEPS.get("smoothquant"), params)


def test_cli_refuses_with_one_line(family_dirs, tmp_path, capsys):
    out = tmp_path / "x"
    rc = main(["compress", str(family_dirs["gpt2"]), "--step", "smoothquant", "--set",
               "alpha=2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "alpha must be in [0, 1]" in err
    assert not out.exists()


def test_refuses_a_half_precision_parent_and_an_inexact_fold(make_family_model, tmp_path):
    with pytest.raises(UsageError, match="folds scales exactly in float32"):
        require_fp32(make_family_model("gpt2").half(), "smoothquant")

    class Parent:
        model, tokenizer = make_family_model("gpt2"), None

    child = copy.deepcopy(Parent.model)
    with torch.no_grad():
        child.transformer.h[0].ln_1.weight.mul_(1.001)
    with pytest.raises(CompressionError, match="not exact"):
        smoothed_child(Parent, child, tmp_path, None, "float32")

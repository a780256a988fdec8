"""AWQ: the int4 fake-quant is ORT's, the scales fold back exactly on every family, the scaled
weights lose less to int4 where the activations are, and the chains into ort_weight_int4."""

import copy

import numpy as np
import pytest
import torch

from slimbench.bench.cli import main
from slimbench.compress.awq import AwqConfig, awq, int4_fake_quant
from slimbench.compress.recipe import Recipe, run_recipe
from slimbench.compress.smoothing import input_stats, out_in, smoothable_groups
from slimbench.compress.steps import STEPS, make_config, run_step
from slimbench.errors import UsageError

EPS32 = float(torch.finfo(torch.float32).eps)


def batches(n=4, length=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4096, size=(1, length)) for _ in range(n)]


def with_outliers(model, factor=20.0):
    """A few large input channels after every norm (the salient channels AWQ protects)."""
    with torch.no_grad():
        for g in smoothable_groups(model, ("norm",))[0]:
            g.producer.weight[:3] *= factor
    return model


def assert_same_function(parent, child):
    """Logits within 64 float32 eps of their scale (test_smoothquant.FOLD_TOL)."""
    ids = torch.as_tensor(np.concatenate(batches(2, 24, seed=7)))
    with torch.no_grad():
        a, b = parent(input_ids=ids).logits, child(input_ids=ids).logits
    assert float((a - b).abs().max()) <= 64 * EPS32 * float(a.abs().max())


def row_relative_int4_error(w: torch.Tensor, x: torch.Tensor, block_size: int,
                            symmetric: bool) -> float:
    """sum over output rows of ||(Q(W) - W)_r X^T||^2 / ||W_r X^T||^2: blind to a row's
    scale, which a later group's fold may have divided (c_attn's v rows, up_proj)."""
    ref = x @ w.double().T  # (tokens, out)
    err = x @ (int4_fake_quant(w, block_size, symmetric) - w).double().T
    return float((err.pow(2).sum(0) / ref.pow(2).sum(0)).sum())


def ort_int4_dequantized(w: np.ndarray, block_size: int, symmetric: bool) -> np.ndarray:
    """What ORT's MatMulNBits RTN (the kernel ort_weight_int4 calls) stores for a MatMul
    weight ``w`` (in, out), dequantized and returned as (out, in)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rows, cols = w.shape
    k_blocks = -(-rows // block_size)
    padded = np.pad(w, ((0, k_blocks * block_size - rows), (0, 0)))
    packed = np.zeros((cols, k_blocks, block_size // 2), np.uint8)
    zero = np.zeros((cols, (k_blocks + 1) // 2), np.uint8)
    scales = np.zeros((cols, k_blocks), np.float32)
    quantize_matmul_4bits(packed, padded, scales, zero, block_size, cols, rows, symmetric)
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(cols, k_blocks, block_size)
    zp = np.stack([zero & 15, zero >> 4], -1).reshape(cols, -1)[:, :k_blocks]
    zp = np.full_like(zp, 8) if symmetric else zp
    deq = (codes.astype(np.float32) - zp[..., None]) * scales[..., None]
    return deq.reshape(cols, -1)[:, :rows]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("block_size", [16, 32, 128])
def test_fake_quant_is_what_ort_stores(symmetric, block_size):
    g = torch.Generator().manual_seed(0)
    # 200 inputs: a last block padded with zeros; channels of very different magnitudes
    w = torch.randn(48, 200, generator=g) * torch.rand(1, 200, generator=g) * 3
    ours = int4_fake_quant(w, block_size, symmetric).numpy()
    theirs = ort_int4_dequantized(np.ascontiguousarray(w.T.numpy()), block_size, symmetric)
    # same float operations as MLAS: equal up to a rounding tie (none in this draw)
    assert np.array_equal(ours, theirs)


def test_awq_scales_fold_back_exactly_on_every_family(family, make_family_model):
    parent = with_outliers(make_family_model(family))
    child = copy.deepcopy(parent)
    audit = awq(child, AwqConfig(block_size=32), batches(), "test")
    assert_same_function(parent, child)
    assert audit.groups_searched == len(smoothable_groups(child, ("norm", "linear", "head"))[0])
    assert audit.lm_head_untied == (family in ("gpt2", "qwen2", "opt"))
    # the norm groups carry the outliers: AWQ scales each of them (alpha > 0) ...
    scaled = {n for n, g in audit.per_group.items() if g.alpha > 0}
    assert {g.name for g in smoothable_groups(child, ("norm",))[0]} <= scaled
    assert audit.groups == len(scaled)
    # ... and the fold really happened there
    names = {m: n for n, m in child.named_modules()}
    before = dict(parent.named_modules())
    for g in smoothable_groups(child)[0]:
        if g.name in scaled:
            for mod in (*g.consumers, g.producer):
                assert not torch.equal(mod.weight, before[names[mod]].weight), g.name


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_awq_lowers_the_activation_weighted_int4_error(family, symmetric, make_family_model):
    parent = with_outliers(make_family_model(family))
    child = copy.deepcopy(parent)
    calib = batches()
    audit = awq(child, AwqConfig(block_size=32, symmetric=symmetric), calib, "test")
    # measured again from the two models: each linear's int4 output error on the inputs it
    # really sees (the child's are X / s), unscaled parent vs AWQ child
    total = {"parent": 0.0, "child": 0.0}
    for key, model in (("parent", parent), ("child", child)):
        groups = smoothable_groups(model)[0]
        for g, st in zip(groups, input_stats(model, groups, calib), strict=True):
            for c in g.consumers:
                total[key] += row_relative_int4_error(out_in(c).detach(), st.sample.double(),
                                                      32, symmetric)
    assert total["child"] < 0.95 * total["parent"]
    # the audit's own bookkeeping agrees in direction, and per group never does worse
    assert audit.error_awq < audit.error_rtn
    assert all(g.error_awq <= g.error_rtn for g in audit.per_group.values())


def test_calibration_reads_only_the_train_split(family_dirs, tmp_path, monkeypatch):
    import slimbench.tasks.corpus as corpus

    splits, load = [], corpus.load_corpus
    monkeypatch.setattr(corpus, "load_corpus", lambda split, *a, **k: (
        splits.append(split), load(split, *a, **k))[1])
    m = run_step("awq", {"block_size": 32, "calib_samples": 2, "calib_seq_len": 16},
                 str(family_dirs["opt"]), tmp_path / "awq")
    assert splits and set(splits) == {"train"}
    q = m.report["quantization"]
    assert q["calibration"]["source"] == "corpus train split"
    assert q["groups_searched"] == 9 and q["method"] == "awq"
    assert m.report["parity"]["max_abs_logit_diff"] <= 1e-4


@pytest.mark.parametrize("algorithm", ["rtn", "gptq"])
def test_chain_into_ort_int4(algorithm, family_dirs, tmp_path):
    int4 = {"algorithm": algorithm, "block_size": 32, "calib_samples": 2, "calib_seq_len": 16}
    recipe = Recipe([("awq", {"block_size": 32, "calib_samples": 2, "calib_seq_len": 16}),
                     ("export_onnx", {}), ("ort_weight_int4", int4)])
    scaled, _, q4 = run_recipe(recipe, str(family_dirs["gpt2"]), tmp_path / "r",
                               say=lambda _: None)
    assert scaled.report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert scaled.report["quantization"]["block_size"] == 32
    q = q4.report["quantization"]
    assert q["algorithm"] == algorithm and q["block_size"] == [32]
    assert q["block_matmuls"] == q["block_matmuls_int4"] == 8
    assert q4.recipe == ["awq", "export_onnx", "ort_weight_int4"]


@pytest.mark.parametrize("params, message", [
    ({"block_size": 100}, "block_size must be one of 16, 32, 64, 128, 256"),
    ({"block_size": 512}, "block_size must be one of"),
    ({"grid": 1}, "grid must be in [2, 200]"),
    ({"symmetric": "yes"}, "symmetric must be true or false"),
    ({"calib_seq_len": 1}, "calib_samples must be >= 1, calib_seq_len >= 2"),
    ({"alpha": 0.5}, "unknown parameter(s) alpha"),
])
def test_bad_config_is_refused(params, message):
    escaped = message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(UsageError, match=f"^step awq: {escaped}"):
        make_config(STEPS.get("awq"), params)


def test_cli_refuses_with_one_line(family_dirs, tmp_path, capsys):
    out = tmp_path / "x"
    rc = main(["compress", str(family_dirs["gpt2"]), "--step", "awq", "--set",
               "block_size=100", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "block_size must be one of" in err
    assert not out.exists()

"""SparseGPT and the layer-wise calibration pass (shared with Wanda), on every family."""

import copy

import pytest
import torch

from slimbench.compress.arch import arch_of
from slimbench.compress.calibration import calibration_batches
from slimbench.compress.prune_unstructured import (
    UnstructuredPruneConfig,
    _row_mask,
    _rows_view,
    prune_unstructured,
)
from slimbench.compress.sparsegpt import sparsegpt_prune
from slimbench.compress.steps import run_step
from slimbench.errors import UsageError


def _batches(model, samples=8, seq_len=64):
    """Seeded random token ids (no tokenizer): 512 tokens, more than any tiny layer's width,
    so every Hessian is full rank."""
    return calibration_batches(None, model.config.vocab_size, samples, seq_len)


def _block_linears(model, block=None) -> dict:
    """{name: module} of every projection of every block (or of one block)."""
    arch = arch_of(model)
    blocks = range(len(arch.block_list(model))) if block is None else [block]
    return {f"{arch.blocks}.{k}.{rel}": model.get_submodule(f"{arch.blocks}.{k}.{rel}")
            for k in blocks for rel in arch.linears()}


def _pruned(model, batches, **params):
    work = copy.deepcopy(model)
    audit = prune_unstructured(work, UnstructuredPruneConfig(**params), batches)
    return work, audit


@torch.no_grad()
def _inputs(model, names, batches) -> dict:
    """{layer name: its inputs X (tokens, in) on the calibration batches, one tensor per
    batch}, float64."""
    seen, hooks = {}, []
    for name in names:
        mod = model.get_submodule(name)
        hooks.append(mod.register_forward_pre_hook(
            lambda _m, a, name=name: seen.setdefault(name, []).append(
                a[0].detach().double().reshape(-1, a[0].shape[-1]))))
    for ids in batches:
        model(input_ids=torch.as_tensor(ids), use_cache=False)
    for h in hooks:
        h.remove()
    return seen


def _norms(xs: list) -> torch.Tensor:
    """||X_j||_2 summed batch by batch, in the order the step sums them (same bits)."""
    total = 0
    for x in xs:
        total = total + (x * x).sum(0)
    return total.sqrt().float()


def test_zero_sparsity_reproduces_the_weights_exactly():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 160, generator=gen)  # 160 columns: a full block of 128 and one of 32
    x = torch.randn(400, 160, generator=gen, dtype=torch.float64)
    out = sparsegpt_prune(w, 2 / 400 * x.t() @ x, 0.0)
    assert torch.equal(out.to(w.dtype), w)  # no pruned weight: every error term is exactly 0


@pytest.mark.parametrize("params", [{"sparsity": 0.5}, {"n_m": "2:4"}])
def test_realized_sparsity_is_exact(family, make_family_model, params):
    model = make_family_model(family)
    pruned, audit = _pruned(model, _batches(model), method="sparsegpt", **params)
    layers = _block_linears(pruned)
    # every tiny width is a multiple of 4 and every block of columns holds an even count:
    # round(0.5 * block numel) is exactly half, so every layer is at exactly 0.5
    assert set(audit.per_layer) == set(layers)
    assert all(v == 0.5 for v in audit.per_layer.values()) and audit.realized == 0.5
    zeros = sum(int((_rows_view(m) == 0).sum()) for m in layers.values())
    assert audit.zeros == zeros == audit.pruned_weights // 2
    if "n_m" in params:
        for mod in layers.values():
            w = _rows_view(mod)  # (out, in): groups of 4 consecutive inputs per row
            assert bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all())


@pytest.mark.parametrize("n_m", [None, "2:4"])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(family, make_family_model, n_m):
    """||W'X - WX|| on the calibration inputs X of block 0's attention output and MLP down
    projections: their inputs are the dense model's under every method (nothing before block 0
    is pruned, and a block's statistics are collected before any of its layers is pruned).

    Those two layers, not q/k/v or the MLP's first projection: in a random tiny model these
    read a LayerNorm of i.i.d. random embeddings, nearly isotropic inputs where the OBS
    saliency is magnitude and there is nothing to re-fit (SparseGPT is within a few percent
    of magnitude there, either side). On correlated inputs it is 5-60% below both."""
    model = make_family_model(family)
    arch = arch_of(model)
    names = [f"{arch.blocks}.0.{rel}" for rel in (arch.out_proj, arch.mlp_out)]
    batches = _batches(model)
    dense = {k: _rows_view(model.get_submodule(k)).detach().double() for k in names}
    xs = {k: torch.cat(v) for k, v in _inputs(model, names, batches).items()}
    prune = {"n_m": n_m} if n_m else {"sparsity": 0.5}
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned, _ = _pruned(model, batches, method=method, **prune)
        for name in names:
            delta = _rows_view(pruned.get_submodule(name)).detach().double() - dense[name]
            errors[method, name] = float((xs[name] @ delta.t()).norm())  # X: (tokens, in)
    for name in names:
        # the smallest margin is 5% (Llama's down projection); float64 sums differ across
        # CPUs by ~1e-12 and a float32 forward's inputs by ~1e-6: neither can close it
        assert errors["sparsegpt", name] < errors["wanda", name], name
        assert errors["sparsegpt", name] < errors["magnitude", name], name


def test_sparsegpt_refits_the_kept_weights_and_magnitude_does_not(family, make_family_model):
    model = make_family_model(family)
    batches = _batches(model)
    dense = {k: _rows_view(m).detach().clone() for k, m in _block_linears(model).items()}
    sparse, _ = _pruned(model, batches, method="sparsegpt", sparsity=0.5)
    mag, _ = _pruned(model, batches, method="magnitude", sparsity=0.5)
    for name, mod in _block_linears(mag).items():
        w = _rows_view(mod)
        assert torch.equal(w[w != 0], dense[name][w != 0])
    for name, mod in _block_linears(sparse).items():
        w = _rows_view(mod)
        changed = (w != dense[name])[w != 0].float().mean()
        # a kept weight stays as it was only while no weight before it in its row was pruned
        # (column 0, and a few more): far above 90% of them move
        assert changed > 0.9, name


def test_wanda_calibrates_block_by_block_on_the_pruned_model(make_family_model):
    """Block 1's Wanda scores use its inputs with block 0 already pruned: the step's result
    equals pruning block 0, then measuring block 1's inputs on that model."""
    model = make_family_model("gpt2")
    batches = _batches(model)
    pruned, _ = _pruned(model, batches, method="wanda", sparsity=0.5)
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        for block in (0, 1):
            layers = _block_linears(by_hand, block)
            xs = _inputs(by_hand, layers, batches)
            for name, mod in layers.items():
                w = _rows_view(mod)  # writes through the view
                w.mul_(_row_mask(w.abs() * _norms(xs[name])[None, :], 0.5))
    for name, mod in _block_linears(pruned).items():
        assert torch.equal(_rows_view(mod) != 0, _rows_view(by_hand.get_submodule(name)) != 0)
    # and that is not what one pass of the dense model gives: check against the old scoring
    dense_x = _inputs(model, _block_linears(model, 1), batches)
    differ = 0
    for name, mod in _block_linears(pruned, 1).items():
        w0 = _rows_view(model.get_submodule(name)).detach()
        old = _row_mask(w0.abs() * _norms(dense_x[name])[None, :], 0.5)
        differ += int((old != (_rows_view(mod) != 0)).sum())
    assert differ > 0


def test_untied_lm_head_is_calibrated_after_the_blocks(make_family_model):
    model = make_family_model("llama")  # tie_word_embeddings=False
    pruned, audit = _pruned(model, _batches(model, samples=4), method="sparsegpt",
                            sparsity=0.5, include_lm_head=True)
    assert audit.per_layer["lm_head"] == 0.5
    head = pruned.lm_head.weight
    kept = head != 0
    assert not torch.equal(head[kept], model.lm_head.weight[kept])  # re-fitted, not masked


def test_calibration_reads_only_the_train_split(family_dirs, monkeypatch, tmp_path):
    import slimbench.tasks.corpus as corpus

    asked, real = [], corpus.load_corpus

    def recording(split, *args, **kwargs):
        asked.append(split)
        return real(split, *args, **kwargs)

    monkeypatch.setattr(corpus, "load_corpus", recording)
    m = run_step("prune_unstructured", {"method": "sparsegpt", "sparsity": 0.5,
                                        "calib_samples": 2, "calib_seq_len": 32},
                 str(family_dirs["gpt2"]), tmp_path / "sg")
    assert asked and set(asked) == {"train"}
    assert m.report["sparsity"]["realized"] == 0.5


def test_sparsegpt_configs_refused():
    with pytest.raises(UsageError, match="layer by layer"):
        UnstructuredPruneConfig(method="sparsegpt", sparsity=0.5, scope="global")
    with pytest.raises(UsageError, match="multiple of M"):
        UnstructuredPruneConfig(method="sparsegpt", n_m="2:3", block_size=128)
    with pytest.raises(UsageError, match="sparsity must be in"):
        UnstructuredPruneConfig(method="sparsegpt", sparsity=0.0)
    with pytest.raises(UsageError, match="needs calibration"):
        prune_unstructured(torch.nn.Linear(4, 4), UnstructuredPruneConfig(
            method="sparsegpt", sparsity=0.5))

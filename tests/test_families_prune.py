"""Structured pruning on every architecture family: loadable smaller models, exact equivalences.

A test taking ``family`` runs once per family of tests/conftest.py (its pytest_generate_tests).
"""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimbench.bench.cli import main
from slimbench.compress import arch as archs
from slimbench.compress.artifact import read_manifest
from slimbench.compress.conv1d import normalize_conv1d
from slimbench.compress.prune_heads import HeadShape, head_channels, prune_groups, set_head_attrs
from slimbench.compress.prune_structured import StructuredPruneConfig, prune_structured, rebuild
from slimbench.compress.steps import run_step
from slimbench.errors import UsageError

# ratio 0.3, targets both, on the tiny models (2 layers, hidden 64, 4 heads; llama/qwen2 2 KV
# heads): (heads, KV heads, hidden, MLP width) after pruning. Llama-style configs store head_dim:
# one of 2 KV groups kept (round(2 * 0.7) = 1) with its 2 query heads, width untouched.
# The others derive head size from width: 3 of 4 heads, so 48 of 64 residual channels.
EXPECTED = {"gpt2": (3, 3, 48, 179), "llama": (2, 1, 64, 90), "qwen2": (2, 1, 64, 90),
            "gpt_neox": (3, 3, 48, 179), "opt": (3, 3, 48, 179)}
IDS = torch.randint(0, 4096, (2, 12), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _shape(cfg):
    return (archs.n_heads(cfg), archs.n_kv_heads(cfg), archs.hidden_size(cfg),
            archs.mlp_width(cfg))


def _compress(tmp_path, src, *sets):
    out = tmp_path / "out"
    argv = ["compress", str(src), "--step", "prune_structured", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    return main(argv), out


def test_cli_prunes_every_family_to_a_loadable_smaller_model(family, family_dirs, tmp_path,
                                                             capsys):
    rc, out = _compress(tmp_path, family_dirs[family], "ratio=0.3")
    assert rc == 0, capsys.readouterr().err
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no slimbench
    assert type(model) is type(AutoModelForCausalLM.from_pretrained(family_dirs[family]))
    assert _shape(model.config) == EXPECTED[family]
    heads, kv, width, inner = EXPECTED[family]
    arch = archs.arch_of(model)
    block = arch.block_list(model)[0]
    head_dim = 16  # 64 / 4, kept by every family
    if arch.qkv_layout == "separate":
        assert block.get_submodule(arch.qkv[0]).weight.shape == (heads * head_dim, width)
        assert block.get_submodule(arch.qkv[1]).weight.shape == (kv * head_dim, width)
    assert block.get_submodule(arch.mlp_out).weight.shape[-1 if family != "gpt2" else 0] \
        == inner
    manifest = read_manifest(out)
    st = manifest.report["structure"]
    assert st["family"] == arch.family
    assert (st["heads"][1], st["kv_heads"][1], st["hidden_size"][1], st["mlp_width"][1]) \
        == EXPECTED[family]
    assert st["hidden_size"][0] == 64 and st["heads"][0] == 4
    params = sum(p.numel() for p in model.parameters())
    assert params == manifest.parameters == st["parameters"][1] < st["parameters"][0]
    assert st["parameter_ratio"] == pytest.approx(params / st["parameters"][0])
    assert len(st["heads_dropped_per_layer"]) == 2
    assert all(len(d) == st["kv_heads"][0] - kv for d in st["heads_dropped_per_layer"])
    assert manifest.report["parity"]["max_abs_logit_diff"] > 0  # the function did change
    if family == "llama":
        assert model.config.head_dim == 16 and model.config.intermediate_size == 90
    if family == "gpt2":
        assert (model.config.n_head, model.config.n_embd, model.config.n_inner) == (3, 48, 179)
    if family == "opt":
        assert (model.config.ffn_dim, model.config.word_embed_proj_dim) == (179, 48)
        assert model.model.decoder.embed_positions.weight.shape[1] == 48


def _linear_copy(model):
    ref = copy.deepcopy(model)
    normalize_conv1d(ref)  # GPT-2's Conv1D as Linear: one (out, in) layout to index
    return ref


def _dropped_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Rows of ``original`` that ``pruned`` no longer has (every kept row is found exactly)."""
    same = (pruned.detach()[:, None, :] == original.detach()[None, :, :]).all(-1)
    assert bool(same.any(1).all())
    return sorted(set(range(original.shape[0])) - set(same.float().argmax(1).tolist()))


def test_mlp_pruning_equals_zeroing_the_dropped_channels(family, make_family_model):
    model = make_family_model(family, seed=1)
    ref = _linear_copy(model)
    arch = archs.arch_of(model)
    work = copy.deepcopy(model)
    audit = prune_structured(work, StructuredPruneConfig(ratio=0.3, targets="mlp"))
    inner, kept = audit.mlp_width
    assert audit.hidden_size == [64, 64] and audit.heads == [4, 4]
    for b_ref, b in zip(arch.block_list(ref), arch.block_list(work), strict=True):
        dropped = _dropped_rows(b_ref.get_submodule(arch.mlp_in[0]).weight,
                                b.get_submodule(arch.mlp_in[0]).weight)
        assert len(dropped) == inner - kept == round(inner * 0.3)
        b_ref.get_submodule(arch.mlp_out).weight.data[:, dropped] = 0
    torch.testing.assert_close(_logits(work), _logits(ref), atol=1e-5, rtol=0)
    assert (_logits(work) - _logits(model)).abs().max() > 1e-3  # zeroing mattered
    torch.testing.assert_close(_logits(rebuild(work)), _logits(work), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gqa_head_pruning_equals_zeroing_the_dropped_heads(family, make_family_model):
    model = make_family_model(family, seed=2)
    arch = archs.arch_of(model)
    work, ref = copy.deepcopy(model), copy.deepcopy(model)
    audit = prune_structured(work, StructuredPruneConfig(ratio=0.5, targets="attention"))
    assert audit.heads == [4, 2] and audit.kv_heads == [2, 1]
    assert audit.hidden_size == [64, 64] and audit.mlp_width == [128, 128]
    shape = HeadShape.of(model.config)
    for b_ref, drop in zip(arch.block_list(ref), audit.heads_dropped_per_layer, strict=True):
        # a dropped KV group takes query heads 2g and 2g+1: their o_proj columns
        cols = [c for h in (2 * drop[0], 2 * drop[0] + 1) for c in range(16 * h, 16 * h + 16)]
        assert [c for p, side, c in head_channels(arch, shape, drop) if side == "in"] == [cols]
        b_ref.get_submodule(arch.out_proj).weight.data[:, cols] = 0
    torch.testing.assert_close(_logits(work), _logits(ref), atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(rebuild(work)), _logits(work), atol=1e-5, rtol=0)


def test_head_function_removes_exactly_one_heads_channels_in_every_layout(family,
                                                                         make_family_model):
    """Heads alone at the same width (not a loadable config for GPT-2/NeoX/OPT, but it runs in
    place) must equal the original with that head's output columns zeroed: proves the rows
    cut for the stacked, interleaved and separate layouts are that head's q, k and v."""
    model = make_family_model(family, seed=3)
    ref, work = _linear_copy(model), _linear_copy(model)
    arch, shape = archs.arch_of(model), HeadShape.of(model.config)
    for b_ref, b in zip(arch.block_list(ref), arch.block_list(work), strict=True):
        for path, side, idxs in head_channels(arch, shape, [1]):
            if side == "in":
                b_ref.get_submodule(path).weight.data[:, idxs] = 0
        prune_groups(b, arch, shape, [1])
        set_head_attrs(b, arch, shape.kept(shape.kv_heads - 1))
    torch.testing.assert_close(_logits(work), _logits(ref), atol=1e-5, rtol=0)
    assert (_logits(work) - _logits(model)).abs().max() > 1e-3


def test_taylor_on_qwen2_drops_other_channels_than_magnitude(family_dirs, tmp_path,
                                                             make_family_model):
    model = make_family_model("qwen2")
    seeded = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 4096, (1, 16), generator=seeded) for _ in range(2)]
    mag, tay = copy.deepcopy(model), copy.deepcopy(model)
    cfg = dict(ratio=0.3, targets="mlp")
    prune_structured(mag, StructuredPruneConfig(**cfg))
    prune_structured(tay, StructuredPruneConfig(**cfg, importance="taylor"), batches)
    up = archs.arch_of(model).mlp_in[0]

    def dropped(m):
        return [_dropped_rows(o.get_submodule(up).weight, p.get_submodule(up).weight)
                for o, p in zip(model.model.layers, m.model.layers, strict=True)]

    assert dropped(mag) != dropped(tay)
    assert all(len(d) == 38 for d in dropped(tay))
    # through the step: corpus calibration, rebuilt and reloaded like any other child
    m = run_step("prune_structured", {"ratio": 0.3, "importance": "taylor", "calib_samples": 2,
                                      "calib_seq_len": 32},
                 str(family_dirs["qwen2"]), tmp_path / "tay")
    assert m.report["structure"]["importance"] == "taylor"
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "tay")
    assert _shape(back.config) == EXPECTED["qwen2"]
    assert torch.isfinite(_logits(back)).all()


def test_opt_with_projected_embeddings_refuses_heads_but_prunes_mlp(ref_tokenizer, tmp_path,
                                                                   capsys, make_family_model):
    src = tmp_path / "opt-proj"
    make_family_model("opt", word_embed_proj_dim=32).save_pretrained(src)  # OPT-350m's layout
    ref_tokenizer.save_pretrained(src)
    capsys.readouterr()  # saving's progress bars are not the step's output
    rc, out = _compress(tmp_path, src, "ratio=0.3")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "word_embed_proj_dim != hidden_size" in err and "use targets=mlp" in err
    assert not out.exists()
    rc, out = _compress(tmp_path, src, "ratio=0.3", "targets=mlp")  # the width stays: fine
    assert rc == 0, capsys.readouterr().err
    cfg = AutoModelForCausalLM.from_pretrained(out).config
    assert (cfg.hidden_size, cfg.word_embed_proj_dim, cfg.ffn_dim) == (64, 32, 179)


def test_unknown_family_gets_the_arch_error():
    class Bloom(torch.nn.Module):
        config = type("Config", (), {"model_type": "bloom"})()

    with pytest.raises(UsageError, match=r"prune_structured: model type 'bloom' is not"):
        prune_structured(Bloom(), StructuredPruneConfig())

"""Unstructured and structured pruning: realized sparsity, Wanda vs magnitude, smaller GPT-2s."""

import copy
import json

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.loader import count_parameters, load_artifact
from slimbench.compress.prune_structured import StructuredPruneConfig, prune_structured, rebuild
from slimbench.compress.prune_unstructured import UnstructuredPruneConfig, prune_unstructured
from slimbench.compress.steps import run_step
from slimbench.errors import UsageError


def _block_weights(model):
    return {n: m.weight for n, m in model.named_modules()
            if type(m).__name__ in ("Conv1D", "Linear") and not n.endswith("lm_head")}


@pytest.mark.parametrize("params", [{"sparsity": 0.5}, {"sparsity": 0.3, "scope": "global"},
                                    {"n_m": "2:4"}, {"n_m": "1:4"}])
def test_realized_sparsity_matches_request(tiny_model, params):
    model = copy.deepcopy(tiny_model)
    cfg = UnstructuredPruneConfig(**params)
    audit = prune_unstructured(model, cfg)
    weights = _block_weights(model)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    assert audit.zeros == zeros and audit.pruned_weights == total
    assert audit.realized == pytest.approx(cfg.target_sparsity, abs=1 / total)
    if cfg.scope == "layer":
        for name in weights:
            assert audit.per_layer[name] == pytest.approx(cfg.target_sparsity, abs=1e-4)
    if cfg.n_m:
        n, m = map(int, cfg.n_m.split(":"))
        for w in weights.values():  # Conv1D stores (in, out): groups run along "in" = dim 0
            kept = (w.t() != 0).reshape(w.shape[1], -1, m).sum(-1)
            assert bool((kept == n).all())
    assert model.transformer.wte.weight.count_nonzero() == model.transformer.wte.weight.numel()


class _OneLayer(nn.Module):
    """A single Linear whose "input_ids" are activations: enough to show what Wanda sees."""

    def __init__(self, weight):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data.copy_(weight)

    def forward(self, input_ids, use_cache=False):
        return self.fc(input_ids)

    def get_input_embeddings(self):
        return None

    def get_output_embeddings(self):
        return None


def test_wanda_differs_from_magnitude_where_activations_are_uneven():
    weight = torch.tensor([[1.0, 0.5, 0.2, 0.1]])
    # feature 0 is almost always ~0, feature 3 is large: |W| alone misjudges both
    x = torch.tensor([[0.001, 1.0, 1.0, 100.0], [-0.001, -1.0, 1.0, -100.0]])
    mag, wanda = _OneLayer(weight), _OneLayer(weight)
    prune_unstructured(mag, UnstructuredPruneConfig(sparsity=0.5))
    prune_unstructured(wanda, UnstructuredPruneConfig(method="wanda", sparsity=0.5), [x])
    assert mag.fc.weight.tolist() == [[1.0, 0.5, 0.0, 0.0]]
    assert (wanda.fc.weight != 0).tolist() == [[False, True, False, True]]
    full = x @ weight.t()
    err_mag = (x @ mag.fc.weight.t() - full).abs().sum()
    err_wanda = (x @ wanda.fc.weight.t() - full).abs().sum()
    assert err_wanda < err_mag / 10


def test_unstructured_step_on_reference_records_sparsity(tmp_path):
    m = run_step("prune_unstructured", {"sparsity": 0.5}, "reference", tmp_path / "mag")
    s = m.report["sparsity"]
    assert s["realized"] == 0.5 and s["requested"] == 0.5 and "no latency" in s["note"]
    assert m.parameters == 2_615_424
    assert m.nonzero_parameters == m.parameters - s["zeros"]
    back = load_artifact(str(tmp_path / "mag"))
    assert count_parameters(back.model) == (m.parameters, m.nonzero_parameters)


@pytest.mark.slow
def test_wanda_at_a_share_that_rounds_per_row_builds(tmp_path):
    """Wanda zeroes round(0.3 x 192) = 58 of each 192-input row (30.2%) and 230 of each
    768-input row (29.9%): the step accepts the rounding, and no more."""
    m = run_step("prune_unstructured", {"method": "wanda", "sparsity": 0.3}, "reference",
                 tmp_path / "w")
    s = m.report["sparsity"]
    assert s["realized"] != 0.3 and abs(s["realized"] - 0.3) <= 0.5 / 192
    assert m.nonzero_parameters == m.parameters - s["zeros"]


def test_bad_unstructured_configs():
    with pytest.raises(UsageError, match="need 0 < N < M"):
        UnstructuredPruneConfig(n_m="4:2")
    with pytest.raises(UsageError, match=r"sparsity must be in \(0, 1\)"):
        UnstructuredPruneConfig(sparsity=1.5)
    with pytest.raises(UsageError, match="implies sparsity 0.5"):
        UnstructuredPruneConfig(n_m="2:4", sparsity=0.3)
    with pytest.raises(UsageError, match="give sparsity"):
        UnstructuredPruneConfig()


def test_structured_pruning_rebuilds_the_same_function(tiny_model):
    work = copy.deepcopy(tiny_model)
    audit = prune_structured(work, StructuredPruneConfig(ratio=0.5))
    assert audit.heads == [4, 2] and audit.mlp_width == [128, 64]
    assert audit.hidden_size == [32, 16]
    rebuilt = rebuild(work)
    ids = torch.randint(0, 4096, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=ids).logits, work(input_ids=ids).logits)
    assert count_parameters(rebuilt)[0] == audit.parameters[1] < audit.parameters[0]


def test_structured_step_reloads_smaller_with_from_pretrained(tmp_path):
    m = run_step("prune_structured", {"ratio": 0.5}, "reference", tmp_path / "s50")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "s50")  # plain transformers
    cfg = model.config
    assert (cfg.n_head, cfg.n_embd, cfg.n_inner) == (3, 96, 384)
    assert model.transformer.h[0].attn.c_attn.weight.shape == (96, 288)
    params = sum(p.numel() for p in model.parameters())
    assert params == m.parameters < 2_615_424 / 2
    files = json.loads((tmp_path / "s50" / "manifest.json").read_text())["files"]
    assert files["model.safetensors"]["bytes"] < 10_470_000 / 2
    rt = TorchRuntime(load_artifact(str(tmp_path / "s50")))
    assert len(rt.greedy_generate([1, 2, 3], 8)) == 8


def test_taylor_importance_uses_gradients(tiny_dir):
    model = load_artifact(str(tiny_dir)).model
    seeded = torch.Generator().manual_seed(0)  # unseeded batches can rank heads as magnitude does
    batches = [torch.randint(0, 4096, (1, 16), generator=seeded) for _ in range(2)]
    mag = prune_structured(copy.deepcopy(model), StructuredPruneConfig(ratio=0.5,
                                                                       targets="attention"))
    tay = prune_structured(copy.deepcopy(model), StructuredPruneConfig(
        ratio=0.5, targets="attention", importance="taylor"), batches)
    assert mag.mlp_width == tay.mlp_width == [128, 128]
    assert mag.heads_dropped_per_layer != tay.heads_dropped_per_layer
    with pytest.raises(UsageError, match="ratio must be in"):
        StructuredPruneConfig(ratio=1.5)

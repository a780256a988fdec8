import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from slimbench.compress.loader import count_parameters, load_artifact
from slimbench.compress.shapes import ShapeSpec
from slimbench.errors import UsageError


def _meta_params(spec: ShapeSpec) -> int:
    with torch.device("meta"):  # shapes without allocating or initialising weights
        return sum(p.numel() for p in GPT2LMHeadModel(GPT2Config(**spec.config_dict()))
                   .parameters())


@pytest.mark.parametrize("name,params", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("distilgpt2", 81_912_576)])
def test_published_parameter_counts(name, params):
    assert _meta_params(ShapeSpec(name)) == params


@pytest.mark.slow
def test_gpt2_shape_loads_flagged_random():
    loaded = load_artifact("shape:gpt2")
    assert loaded.info.parameters == 124_439_808
    assert loaded.info.random_weights is True and loaded.info.kind == "shape"
    assert loaded.tokenizer is None and loaded.info.bytes_on_disk is None
    assert count_parameters(loaded.model)[0] == 124_439_808


def test_overrides_and_seed_determinism():
    a = load_artifact("shape:gpt2:n_layer=2,n_embd=64,n_head=4")
    b = load_artifact("shape:gpt2:n_layer=2,n_embd=64,n_head=4")
    assert a.model.config.n_layer == 2 and a.info.spec == "shape:gpt2:n_layer=2,n_embd=64,n_head=4"
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    # 2 blocks of d=64 plus gpt2's 50257 x 64 embedding and 1024 x 64 positions
    assert a.info.parameters == 50257 * 64 + 1024 * 64 + 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64


@pytest.mark.parametrize("spec,msg", [
    ("shape:gpt3", "unknown shape 'gpt3'"),
    ("shape:gpt2:n_head=5", "not divisible by n_head=5"),
    ("shape:gpt2:n_layers=2", "'n_layers' is not a GPT2Config field"),
    ("shape:gpt2:n_layer=-1", "must be a positive integer"),
    ("shape:gpt2:n_layer", "must look like key=value"),
])
def test_bad_shape_specs(spec, msg):
    with pytest.raises(UsageError, match=msg):
        load_artifact(spec)

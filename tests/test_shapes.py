import pytest
import torch

from slimbench.compress.loader import count_parameters, load_artifact
from slimbench.compress.shapes import ShapeSpec, meta_parameters
from slimbench.errors import UsageError


# the parameter counts the published checkpoints have (tied embeddings counted once)
@pytest.mark.parametrize("name,params", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("distilgpt2", 81_912_576),
    ("llama-135m", 134_515_008), ("tinyllama-1.1b", 1_100_048_384),
    ("qwen2-0.5b", 494_032_768), ("pythia-160m", 162_322_944), ("opt-125m", 125_239_296)])
def test_published_parameter_counts(name, params):
    assert meta_parameters(ShapeSpec(name)) == params


@pytest.mark.parametrize("spec,model_type,kv,head", [
    ("shape:llama-135m:num_hidden_layers=2", "llama", 3, 64),
    ("shape:qwen2-0.5b:num_hidden_layers=1", "qwen2", 2, 64),
    ("shape:pythia-160m:num_hidden_layers=1", "gpt_neox", 12, 64),
    ("shape:opt-125m:num_hidden_layers=1", "opt", 12, 64)])
def test_family_shapes_load_with_their_layout(spec, model_type, kv, head):
    from slimbench.compress.arch import head_dim, n_kv_heads, n_layers

    cfg = load_artifact(spec).model.config
    assert cfg.model_type == model_type and n_kv_heads(cfg) == kv and head_dim(cfg) == head
    assert n_layers(cfg) == int(spec.rpartition("=")[2])


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
    ("shape:gpt2:n_head=5", "not divisible by 5 heads"),
    ("shape:gpt2:n_layers=2", "'n_layers' is not a field of the GPT2Config"),
    ("shape:llama-135m:num_key_value_heads=2", "9 query heads are not divisible into 2 KV"),
    ("shape:gpt2:n_layer=-1", "must be a positive integer"),
    ("shape:gpt2:n_layer", "must look like key=value"),
])
def test_bad_shape_specs(spec, msg):
    with pytest.raises(UsageError, match=msg):
        load_artifact(spec)

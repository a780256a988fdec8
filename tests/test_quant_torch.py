import copy
import json
import warnings

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.artifact import MANIFEST
from slimbench.compress.conv1d import normalize_conv1d
from slimbench.compress.loader import LoadOptions, load_artifact
from slimbench.compress.quant_torch import (
    TorchDynamicInt8Config,
    audit_quantization,
    quantize_dynamic_int8,
    require_full_coverage,
)
from slimbench.compress.steps import run_step
from slimbench.errors import CompressionError, ModelLoadError, UsageError
from slimbench.tasks.evalsets import load_evalset
from slimbench.tasks.perplexity import perplexity


@pytest.fixture(scope="module")
def gpt2_shape():
    return load_artifact("shape:gpt2").model


@pytest.fixture(scope="module")
def reference():
    return load_artifact("reference")


def test_conv1d_to_linear_is_equivalent(reference):
    model = copy.deepcopy(reference.model)
    prompt = reference.tokenizer("class Reader:\n    def read(self, n):\n        return")
    ids = torch.tensor([prompt["input_ids"]])
    with torch.no_grad():
        before = model(ids).logits
        greedy_before = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert normalize_conv1d(model) == 4 * 4
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    assert all(isinstance(model.transformer.h[i].mlp.c_fc, nn.Linear) for i in range(4))
    with torch.no_grad():
        after = model(ids).logits
        greedy_after = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert torch.allclose(before, after, atol=1e-4, rtol=0)
    assert torch.equal(greedy_before, greedy_after)


@pytest.mark.slow
def test_every_block_linear_quantized_on_gpt2_shapes(gpt2_shape):
    q = quantize_dynamic_int8(copy.deepcopy(gpt2_shape), TorchDynamicInt8Config())
    audit = audit_quantization(q)
    assert audit.blocks == 12 and audit.block_linears == 48
    assert audit.block_linears_int8 == 48
    assert audit.per_block_int8 == {str(i): 4 for i in range(12)}
    assert audit.lm_head == "float"
    # 12 blocks x (768x2304 + 768x768 + 768x3072 + 3072x768) int8 weights
    assert audit.int8_weight_bytes == 12 * 768 * (2304 + 768 + 3072 + 3072)
    require_full_coverage(audit)
    with_head = audit_quantization(quantize_dynamic_int8(
        copy.deepcopy(gpt2_shape), TorchDynamicInt8Config(include_lm_head=True)))
    assert with_head.lm_head == "int8" and with_head.block_linears_int8 == 48


def test_naive_quantize_dynamic_is_caught(gpt2_shape):
    """The known pitfall: {nn.Linear} on raw GPT-2 quantizes only lm_head."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(gpt2_shape), {nn.Linear}, dtype=torch.qint8)
    audit = audit_quantization(naive)
    assert audit.block_linears_int8 == 0 and audit.block_linears == 48
    assert audit.lm_head == "int8"
    with pytest.raises(CompressionError, match="quantized nothing inside the transformer blocks"):
        require_full_coverage(audit)


def test_bad_engine():
    with pytest.raises(UsageError, match="quantized engine 'tpu' is not available"):
        TorchDynamicInt8Config(engine="tpu")


@pytest.mark.slow
def test_int8_artifact_round_trip(tmp_path, reference):
    out = tmp_path / "ref-int8"
    manifest = run_step("torch_dynamic_int8", {}, "reference", out)
    on_disk = json.loads((out / MANIFEST).read_text())
    assert on_disk["quantization"]["block_linears_int8"] == 16 == manifest.report[
        "quantization"]["block_linears"]
    assert manifest.to_dict() == on_disk  # the typed manifest is exactly what was written
    assert on_disk["parent"]["weights_sha256"] == reference.info.weights_sha256
    assert on_disk["recipe"] == ["torch_dynamic_int8"] and on_disk["random_weights"] is False
    assert on_disk["bytes_on_disk"] == sum(f["bytes"] for f in on_disk["files"].values())
    assert 0.8 <= on_disk["parity"]["top1_agreement"] <= 1.0
    assert not list(tmp_path.glob(".*partial"))  # staging directory renamed away

    loaded = load_artifact(str(out))
    assert loaded.info.kind == "artifact" and loaded.info.recipe == ["torch_dynamic_int8"]
    assert audit_quantization(loaded.model).block_linears_int8 == 16
    assert loaded.manifest == manifest and loaded.info.manifest == on_disk
    texts = [r["text"] for r in load_evalset("lm_stdlib", limit=40)]
    fp32 = perplexity(TorchRuntime(reference), reference.tokenizer, texts).perplexity
    int8 = perplexity(TorchRuntime(loaded), loaded.tokenizer, texts).perplexity
    assert int8 != fp32 and abs(int8 / fp32 - 1) < 0.03

    with pytest.raises(UsageError, match="already exists"):
        run_step("torch_dynamic_int8", {}, "reference", out)
    with pytest.raises(UsageError, match="runs on cpu in float32 only"):
        load_artifact(str(out), LoadOptions(dtype="bfloat16"))


@pytest.mark.slow
def test_int8_embeddings_cost_little_quality_on_the_reference(tmp_path, reference):
    """The reference with its tied embedding int8 per row as well: one int8 matrix for both
    ends, perplexity within 3% of fp32's and the top-1 token mostly kept."""
    out = tmp_path / "ref-int8-emb"
    manifest = run_step("torch_dynamic_int8", {"include_embeddings": True}, "reference", out)
    assert manifest.report["dtypes"]["embeddings"] == "int8 (per row)"
    # 0.96 here (AMX); int8 GEMMs differ by ISA (AVX2, VNNI, AMX): a margin, not one machine's
    assert manifest.report["parity"]["top1_agreement"] >= 0.85
    loaded = load_artifact(str(out))
    head, emb = loaded.model.get_output_embeddings(), loaded.model.get_input_embeddings()
    assert torch.equal(head.weight().dequantize(), emb.weight().dequantize())  # still tied
    texts = [r["text"] for r in load_evalset("lm_stdlib", limit=40)]
    fp32 = perplexity(TorchRuntime(reference), reference.tokenizer, texts).perplexity
    int8 = perplexity(TorchRuntime(loaded), loaded.tokenizer, texts).perplexity
    assert int8 != fp32 and abs(int8 / fp32 - 1) < 0.03


def test_tampered_manifest_is_refused(tmp_path):
    out = tmp_path / "tiny-int8"
    run_step("torch_dynamic_int8", {}, "shape:gpt2:n_layer=2,n_embd=64,n_head=4", out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["random_weights"] is True  # inherited from the shape model
    assert load_artifact(str(out)).info.random_weights is True
    manifest["quantization"]["block_linears_int8"] = 99
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="manifest recorded"):
        load_artifact(str(out))


def test_bad_step_parameters_fail_before_work(tmp_path):
    with pytest.raises(UsageError, match=r"unknown parameter\(s\) bits"):
        run_step("torch_dynamic_int8", {"bits": 4}, "reference", tmp_path / "x")
    with pytest.raises(UsageError, match="unknown recipe step 'torch_int8'"):
        run_step("torch_int8", {}, "reference", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_torch_bf16_cast_halves_bytes_and_keeps_quality(tmp_path, reference):
    out = tmp_path / "bf16"
    m = run_step("torch_cast", {"dtype": "bfloat16"}, "reference", out)
    assert m.load_dtype == "bfloat16" and m.report["parity"]["top1_agreement"] >= 0.95
    weights = m.files["model.safetensors"].bytes
    assert weights < 0.55 * reference.info.bytes_on_disk
    loaded = load_artifact(str(out))  # loads as stored
    assert loaded.info.dtype == "bfloat16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    texts = [r["text"] for r in load_evalset("lm_stdlib", limit=10)]
    fp32 = perplexity(TorchRuntime(reference), reference.tokenizer, texts).perplexity
    bf16 = perplexity(TorchRuntime(loaded), loaded.tokenizer, texts).perplexity
    assert abs(bf16 / fp32 - 1) < 0.01
    with pytest.raises(UsageError, match="dtype must be one of"):
        run_step("torch_cast", {"dtype": "int4"}, "reference", tmp_path / "bad")


@pytest.mark.parametrize("embeddings", [False, True])
def test_the_artifact_stores_int8_and_loads_the_very_model_quantized(tmp_path, family_dirs,
                                                                   family, embeddings):
    """Every family: the int8 weights on disk, no float copy of them, and the loaded model
    is the one quantized in memory, logit for logit (tied or untied output projections),
    with its embeddings float or int8."""
    from slimbench.compress.torch_int8_store import FLOAT_FILE, INT8_FILE

    out = tmp_path / "int8"
    params = {"include_embeddings": embeddings}
    manifest = run_step("torch_dynamic_int8", params, str(family_dirs[family]), out)
    assert {f for f in manifest.files} >= {INT8_FILE, FLOAT_FILE}
    assert not list(out.glob("model*.safetensors"))  # nothing a float loader would take
    parent = load_artifact(str(family_dirs[family]))
    expected = quantize_dynamic_int8(copy.deepcopy(parent.model),
                                     TorchDynamicInt8Config(**params))
    loaded = load_artifact(str(out))
    ids = torch.randint(0, parent.model.config.vocab_size, (2, 12), generator=torch.Generator()
                        .manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, expected(ids).logits)
    # the int8 weights count as parameters, as the float ones did
    assert loaded.info.parameters == manifest.report["parameters"] == parent.info.parameters
    audit = manifest.report["quantization"]
    assert audit["embeddings"] == audit_quantization(loaded.model).embeddings == \
        ("int8" if embeddings else "float")
    assert audit["lm_head"] == ("int8" if embeddings else "float")
    # a tied int8 matrix once: the file is its int8 bytes and little more
    assert (out / INT8_FILE).stat().st_size < 1.1 * audit["int8_weight_bytes"] + 65536
    emb = parent.model.get_input_embeddings().weight
    tied = parent.model.get_output_embeddings().weight is emb
    blocks = audit_quantization(quantize_dynamic_int8(
        copy.deepcopy(parent.model), TorchDynamicInt8Config())).int8_weight_bytes
    extra = (emb.numel() * (1 if tied else 2)) if embeddings else 0
    assert audit["int8_weight_bytes"] == blocks + extra


@pytest.mark.slow
@pytest.mark.parametrize("embeddings, ratio", [(False, 0.5), (True, 0.35)])
def test_the_gpt2_artifact_holds_one_byte_per_int8_weight(tmp_path, embeddings, ratio):
    """On disk: one byte per int8 weight (block linears, and with ``include_embeddings`` the
    tied embedding and output projection once), four per other parameter, little else:
    0.49x the float file, 0.26x with the embeddings."""
    out = tmp_path / "gpt2-int8"
    manifest = run_step("torch_dynamic_int8", {"include_embeddings": embeddings},
                        "shape:gpt2", out)
    int8 = manifest.report["quantization"]["int8_weight_bytes"]
    rest = manifest.report["parameters"] - int8  # float: embeddings, norms, biases
    assert int8 + 4 * rest <= manifest.bytes_on_disk <= int8 + 4 * rest + 1_000_000
    assert manifest.bytes_on_disk < ratio * 4 * manifest.report["parameters"]


def test_the_same_model_saves_to_the_same_bytes(tmp_path):
    """The artifact's sha256 identifies its model: saved ten times, the bytes never differ
    (safetensors orders a file's metadata keys at random, so the float file carries one)."""
    import hashlib

    from slimbench.compress.torch_int8_store import FLOAT_FILE, INT8_FILE, save_int8

    model = quantize_dynamic_int8(load_artifact("shape:gpt2:n_layer=1,n_embd=32,n_head=2")
                                  .model, TorchDynamicInt8Config())
    digests = set()
    for i in range(10):
        out = tmp_path / str(i)
        out.mkdir()
        save_int8(model, out)
        digests.add(tuple(hashlib.sha256((out / f).read_bytes()).hexdigest()
                          for f in (FLOAT_FILE, INT8_FILE)))
    assert len(digests) == 1


def test_an_int8_file_that_does_not_fit_its_config_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from slimbench.compress.torch_int8_store import FLOAT_FILE, load_int8

    out = tmp_path / "tiny-int8"
    run_step("torch_dynamic_int8", {}, "shape:gpt2:n_layer=2,n_embd=64,n_head=4", out)
    with safe_open(out / FLOAT_FILE, "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["slimbench_ties"]) == {"lm_head.weight": "transformer.wte.weight"}
    floats = load_file(out / FLOAT_FILE)
    floats.pop("transformer.ln_f.weight")
    save_file(floats, out / FLOAT_FILE, metadata=metadata)
    with pytest.raises(ModelLoadError, match=r"does not fit its config \(\d+ tensors missing, "
                                             r"e\.g\. \['transformer\.ln_f\.weight'\]"):
        load_int8(out, "x86")
    with pytest.raises(ModelLoadError, match="does not match its manifest"):
        load_artifact(str(out))


def test_a_version_2_artifact_with_float_weights_still_loads_quantized(tmp_path):
    """Before version 3 the step stored the float weights and quantized them at load: such
    an artifact (here rewritten from a version-3 one) loads as the same int8 model."""
    import hashlib

    from slimbench.compress.step_io import save_model
    from slimbench.compress.torch_int8_store import FLOAT_FILE, INT8_FILE

    spec = "shape:gpt2:n_layer=2,n_embd=64,n_head=4"
    out = tmp_path / "v2"
    run_step("torch_dynamic_int8", {}, spec, out)
    v3 = load_artifact(str(out))
    (out / INT8_FILE).unlink()
    (out / FLOAT_FILE).unlink()
    save_model(load_artifact(spec).model, None, out)  # the float parent, as version 2 did
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"] = {f.name: {"bytes": f.stat().st_size,
                                  "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
                         for f in sorted(out.iterdir()) if f.name != MANIFEST}
    manifest["bytes_on_disk"] = sum(e["bytes"] for e in manifest["files"].values())
    (out / MANIFEST).write_text(json.dumps(manifest))
    v2 = load_artifact(str(out))
    assert audit_quantization(v2.model).block_linears_int8 == \
        manifest["quantization"]["block_linears_int8"] > 0
    ids = torch.arange(10).reshape(1, 10)
    with torch.no_grad():
        assert torch.equal(v2.model(ids).logits, v3.model(ids).logits)

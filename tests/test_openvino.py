"""The OpenVINO backend: export_openvino on every family, its runtime against torch, NNCF's
int8 / int4 weights counted and measured, the KV tickets of a stateful request, refusals.

A test taking ``family`` runs once per family of tests/conftest.py.
"""

import sys

import numpy as np
import pytest

from slimbench.bench.cli import main
from slimbench.bench.runtimes import make_runtime
from slimbench.compress.artifact import read_manifest
from slimbench.compress.loader import load_artifact
from slimbench.compress.openvino_model import OV_BIN
from slimbench.compress.steps import run_step
from slimbench.errors import UsageError
from slimbench.tasks.evalsets import load_evalset
from slimbench.tasks.perplexity import perplexity

PROMPTS = [[5, 17, 300, 2], [9, 8, 7, 6, 5, 4, 3], [1000]]


@pytest.fixture
def ov_export(family_exports, built):
    """(family, weights="float32", **params) -> its OpenVINO artifact, built once."""
    return lambda family, weights="float32", **params: built(
        "export_openvino", family_exports(family), weights=weights, **params)


def test_fp32_runs_as_torch_does(family, family_dirs, ov_export, runs_as_torch):
    """fp32: perplexity within 1e-4 relative of torch's, greedy tokens identical one prompt
    at a time and in a left-padded batch, the cache inside the request."""
    out = ov_export(family)
    manifest = read_manifest(out)
    assert manifest.format == "openvino" and manifest.recipe == ["export_onnx", "export_openvino"]
    audit = manifest.report["quantization"]
    assert audit["compressed_matmuls"] == 0 and audit["weight_matmuls"] > 0
    assert audit["stateful_variables"] == 2 * 2  # key and value of each of 2 blocks
    assert manifest.report["parity"]["max_abs_logit_diff"] <= 1e-4
    runs_as_torch(out, family_dirs[family], "openvino")


@pytest.mark.parametrize("weights", ["int8_asym", "int8_sym", "int4_sym", "int4_asym"])
def test_nncf_compresses_every_weight_matmul(ov_export, weights):
    fp32 = read_manifest(ov_export("llama"))
    out = ov_export("llama", weights, group_size=32)
    audit = read_manifest(out).report["quantization"]
    assert audit["compressed_matmuls"] == audit["weight_matmuls"] == \
        fp32.report["quantization"]["weight_matmuls"]
    assert audit["compressed_gathers"] == 1  # the token embedding
    low = {"int8": {"u8", "i8"}, "int4": {"u4", "i4"}}[weights[:4]]
    assert set(audit["constants_by_type"]) & low and "f32" not in audit["constants_by_type"]
    size = (out / OV_BIN).stat().st_size
    assert size < 0.3 * (ov_export("llama") / OV_BIN).stat().st_size
    if weights.startswith("int4"):
        assert size < (ov_export("llama", "int8_asym", group_size=32) / OV_BIN).stat().st_size
    rt = make_runtime(load_artifact(str(out)), threads=2)
    assert len(rt.greedy_generate(PROMPTS[0], 8)) == 8


@pytest.mark.slow
def test_compressed_reference_keeps_its_quality(tmp_path):
    """The reference in OpenVINO: int8 within 1% of fp32's perplexity, int4 within 8%."""
    onnx_dir = tmp_path / "onnx"
    run_step("export_onnx", {}, "reference", onnx_dir)
    reference = load_artifact("reference")
    texts = [r["text"] for r in load_evalset("lm_stdlib", limit=40)]
    fp32 = perplexity(make_runtime(reference), reference.tokenizer, texts).perplexity
    for weights, bound, params in (("int8_sym", 0.01, {}), ("int4_sym", 0.08,
                                                           {"group_size": 64})):
        out = tmp_path / weights
        manifest = run_step("export_openvino", {"weights": weights, **params}, str(onnx_dir),
                            out)
        assert manifest.report["parity"]["top1_agreement"] >= 0.85
        loaded = load_artifact(str(out))
        ppl = perplexity(make_runtime(loaded, threads=2), loaded.tokenizer, texts).perplexity
        assert ppl != fp32 and abs(ppl / fp32 - 1) < bound, (weights, ppl, fp32)


def test_sequences_under_way_keep_their_own_cache(ov_export):
    """Two sequences interleaved (the paired A/B keeps one per slot) continue as each alone;
    scoring in between leaves both; a ticket that moved on is refused."""
    rt = make_runtime(load_artifact(str(ov_export("gpt2"))), threads=2)
    a, b = np.array([[5, 17, 300, 2]]), np.array([[9, 8, 7]])
    alone = {}
    for name, ids in (("a", a), ("b", b)):
        logits, past = rt.forward(ids)
        step, _ = rt.forward(np.array([[11]]), past)
        alone[name] = step
    la, pa = rt.forward(a)
    lb, pb = rt.forward(b)
    rt.forward(np.array([[1, 2, 3, 4, 5, 6]]), keep_cache=False)
    sa, pa2 = rt.forward(np.array([[11]]), pa)
    sb, _ = rt.forward(np.array([[11]]), pb)
    # the same graph on the same inputs: equal but for reduction order, 64-term fp32 sums
    np.testing.assert_allclose(sa, alone["a"], atol=1e-5)
    np.testing.assert_allclose(sb, alone["b"], atol=1e-5)
    with pytest.raises(ValueError, match="stale or mismatched KV cache"):
        rt.forward(np.array([[12]]), pa)  # pa2 is its sequence's newest
    rt.forward(np.array([[12]]), pa2)


def test_refusals(family_exports, ov_export, tmp_path, capsys, monkeypatch):
    from slimbench.compress.loader import LoadOptions

    with pytest.raises(UsageError, match="is an OpenVINO artifact: it runs on cpu, its dtype "
                                         "fixed at export"):
        load_artifact(str(ov_export("llama")), LoadOptions(dtype="float16"))
    llama = str(family_exports("llama"))
    with pytest.raises(UsageError, match="group_size 48 does not divide .* choose a divisor"):
        run_step("export_openvino", {"weights": "int4_sym", "group_size": 48}, llama,
                 tmp_path / "g48")
    with pytest.raises(UsageError, match="weights must be one of float32, int8_asym"):
        run_step("export_openvino", {"weights": "int3"}, llama, tmp_path / "int3")
    with pytest.raises(UsageError, match="takes an ONNX export with attention: ops.*fused"):
        run_step("export_openvino", {}, str(family_exports("llama", "fused")), tmp_path / "f")
    with pytest.raises(UsageError, match="export_openvino needs an ONNX artifact; "
                                         ".reference. is a float32 torch"):
        run_step("export_openvino", {}, "reference", tmp_path / "torch")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the extra were not installed
    capsys.readouterr()
    code = main(["compress", llama, "--step", "export_openvino", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'slimbench[openvino]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_the_engine_versions_key_its_artifacts_only(tmp_path, monkeypatch):
    """Another NNCF or OpenVINO builds another OpenVINO artifact; other steps' keys do not
    depend on whether the extra is installed."""
    from slimbench.compress import cache as cache_module
    from slimbench.compress.cache import ArtifactCache

    real = cache_module.package_versions
    cache = ArtifactCache(tmp_path / "cache", lambda _: None)
    keys = []
    for nncf in ("3.4.0", "3.5.0", None):
        monkeypatch.setattr(cache_module, "package_versions", lambda names, v=nncf: {
            n: (v if n in ("nncf", "openvino") else real((n,))[n]) for n in names})
        keys.append((cache.step_key("parent", "export_openvino", {}),
                     cache.step_key("parent", "torch_dynamic_int8", {})))
    assert len({ov for ov, _ in keys}) == 3 and len({t for _, t in keys}) == 1


def test_a_sequence_moves_between_its_two_graphs(ov_export):
    """Begun on the last-position graph (generation), a chunk that wants every position's
    logits continues on the full graph with the same cache: the logits of one full forward."""
    rt = make_runtime(load_artifact(str(ov_export("llama"))), threads=2)
    ids = np.random.default_rng(1).integers(0, rt.vocab_size, size=(2, 10))
    full, _ = rt.forward(ids, keep_cache=False)
    first, past = rt.forward(ids[:, :6], last_only=True)
    assert first.shape == (2, 1, rt.vocab_size) and past.graph == "last"
    np.testing.assert_allclose(first[:, 0], full[:, 5], atol=1e-5)
    chunk, moved = rt.forward(ids[:, 6:9], past)
    assert moved.graph == "full" and moved.length == 9
    np.testing.assert_allclose(chunk, full[:, 6:9], atol=1e-5)
    with pytest.raises(ValueError, match="stale"):
        rt.forward(ids[:, 9:], past)
    step, _ = rt.forward(ids[:, 9:], moved)
    np.testing.assert_allclose(step[:, 0], full[:, 9], atol=1e-5)

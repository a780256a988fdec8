"""The CTranslate2 backend: export_ctranslate2 on every family, its runtime against torch,
int8 / int16 weights counted from model.bin, the scenarios on an engine that keeps its cache,
refusals.

A test taking ``family`` runs once per family of tests/conftest.py.
"""

import sys

import pytest

from slimbench.bench.cli import main
from slimbench.bench.measure.scenarios import decode_latency, generate_latency, prefill_latency
from slimbench.bench.runtimes import make_runtime
from slimbench.compress.artifact import read_manifest
from slimbench.compress.ctranslate2_export import FAMILIES
from slimbench.compress.ctranslate2_model import CT2_BIN
from slimbench.compress.loader import load_artifact
from slimbench.compress.steps import run_step
from slimbench.errors import UsageError

PROMPTS = [[5, 17, 300, 2], [9, 8, 7, 6, 5, 4, 3], [1000]]


@pytest.fixture
def ct2_export(family_dirs, built):
    """(family, quantization="float32") -> its CTranslate2 artifact, built once."""
    return lambda family, quantization="float32": built(
        "export_ctranslate2", family_dirs[family], quantization=quantization)


def test_fp32_runs_as_torch_does(family, family_dirs, ct2_export, tmp_path, runs_as_torch):
    """fp32: perplexity within 1e-4 relative of torch's, greedy tokens identical one prompt
    at a time and in a batch, log-probs within 1e-4 (a family CTranslate2 cannot convert is
    refused before any work, by name)."""
    if family not in FAMILIES:
        with pytest.raises(UsageError, match=f"cannot read this {family} model"):
            run_step("export_ctranslate2", {}, str(family_dirs[family]), tmp_path / "x")
        assert not (tmp_path / "x").exists()
        return
    out = ct2_export(family)
    manifest = read_manifest(out)
    assert manifest.format == "ctranslate2" and manifest.recipe == ["export_ctranslate2"]
    assert manifest.report["parity"]["max_abs_logit_diff"] <= 1e-4
    runs_as_torch(out, family_dirs[family], "ctranslate2")


@pytest.mark.parametrize("quantization, stored", [("int8", "int8"), ("int8_float32", "int8"),
                                                  ("int16", "int16")])
def test_weights_are_stored_in_the_quantization(ct2_export, quantization, stored):
    fp32 = read_manifest(ct2_export("gpt2")).report["quantization"]
    out = ct2_export("gpt2", quantization)
    audit = read_manifest(out).report["quantization"]
    total = sum(fp32["weights_by_type"].values())
    # every weight matrix but GPT-2's learned position table
    assert audit["weights_compressed"] == audit["weights_by_type"][stored] == total - 1
    assert audit["float_weights"] == ["decoder/position_encodings/encodings"]
    size, fp32_size = ((d / CT2_BIN).stat().st_size for d in (out, ct2_export("gpt2")))
    assert size < {"int8": 0.35, "int16": 0.6}[stored] * fp32_size
    rt = make_runtime(load_artifact(str(out)), threads=2)
    assert len(rt.greedy_generate(PROMPTS[0], 8)) == 8


def test_the_latency_scenarios_run_on_an_engine_that_keeps_its_cache(ct2_export):
    rt = make_runtime(load_artifact(str(ct2_export("llama", "int8"))), threads=2)
    decode = decode_latency(rt, context=16, new_tokens=8, repeats=2)
    assert decode.params["repeats"] == 2
    assert {m.name for m in decode.measurements} == {"decode_ms_per_token"}
    generate = generate_latency(rt, prompt_len=16, new_tokens=8, repeats=2)
    assert {m.name for m in generate.measurements} >= {"ttft_ms", "tpot_ms", "tokens_per_s"}
    prefill = prefill_latency(rt, seq_len=16, min_seconds=0.0)
    assert all(m.median > 0 for s in (decode, generate, prefill) for m in s.measurements)
    with pytest.raises(ValueError, match="one prompt at a time"):
        generate_latency(rt, prompt_len=16, new_tokens=8, repeats=1, batch=2)


def test_refusals(family_dirs, family_exports, ct2_export, tmp_path, capsys, monkeypatch):
    from slimbench.compress.loader import LoadOptions

    with pytest.raises(UsageError, match="is a CTranslate2 artifact: it runs on cpu, its dtype "
                                         "fixed at export"):
        load_artifact(str(ct2_export("gpt2")), LoadOptions(dtype="bfloat16"))
    gpt2 = str(family_dirs["gpt2"])
    with pytest.raises(UsageError, match="quantization must be one of float32, int8"):
        run_step("export_ctranslate2", {"quantization": "int4"}, gpt2, tmp_path / "int4")
    with pytest.raises(UsageError, match="export_ctranslate2 needs a float32 torch model; "
                                         ".* is an ONNX artifact"):
        run_step("export_ctranslate2", {}, str(family_exports("gpt2")), tmp_path / "onnx")
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if the extra were missing
    capsys.readouterr()
    code = main(["compress", gpt2, "--step", "export_ctranslate2", "--out",
                 str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'slimbench[ctranslate2]'" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "x").exists()


def test_a_model_without_a_tokenizer_converts_and_runs_on_ids(tmp_path):
    """A random-weight shape has no tokenizer: converted with placeholder token strings, it
    runs on ids as the torch model does, and no tokenizer is written."""
    spec = "shape:llama-135m:num_hidden_layers=1"
    out = tmp_path / "ct2"
    run_step("export_ctranslate2", {}, spec, out)
    assert not (out / "tokenizer.json").exists()
    ct2 = make_runtime(load_artifact(str(out)), threads=2)
    torch_rt = make_runtime(load_artifact(spec))
    assert ct2.greedy_generate(PROMPTS[1], 8) == torch_rt.greedy_generate(PROMPTS[1], 8)


def test_a_cell_reports_the_batches_the_engine_cannot_time_as_na(ct2_export):
    """A sweep with batches: CTranslate2 times batch 1, and the cell says n/a, with the
    reason, for the rest (not a failed cell, not a faked figure)."""
    from slimbench.bench.measure.cell import LatencyConfig, measure_latency

    loaded = load_artifact(str(ct2_export("gpt2")))
    rt = make_runtime(loaded, threads=2)
    cfg = LatencyConfig(prefill=(8,), decode_contexts=(8,), new_tokens=4, generate_prompt=8,
                        generate_batches=(1, 2), batches=(1, 4), repeats=1, min_seconds=0.0)
    out = measure_latency(rt, loaded, cfg, "cpu")
    tags = {(s.scenario, s.tag) for s in out.latency.scenarios}
    assert ("generate", "8") in tags and ("generate", "8x2") not in tags
    assert ("prefill", "8") in tags and ("prefill", "8x4") not in tags
    na = [w for w in out.warnings if ": n/a: " in w]
    assert sorted(w.split(":")[0] for w in na) == ["generate@8x2", "prefill@8x4"]
    assert all("streams one prompt at a time" in w for w in na)

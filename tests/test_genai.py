"""The ONNX Runtime GenAI backend: export_genai (GenAI's own builder) on every family, its
runtime against torch, int4 / int8 MatMulNBits counted from the graph, the scenarios on an
engine that keeps its cache, one ONNX Runtime under both packages, refusals.

A test taking ``family`` runs once per family of tests/conftest.py.
"""

import importlib.metadata
import sys

import numpy as np
import pytest
import torch

from slimbench.bench.cli import main
from slimbench.bench.measure.scenarios import decode_latency, generate_latency, prefill_latency
from slimbench.bench.runtimes import make_runtime
from slimbench.compress.artifact import read_manifest
from slimbench.compress.genai_export import FAMILIES
from slimbench.compress.loader import load_artifact
from slimbench.compress.steps import run_step
from slimbench.errors import UsageError

PROMPTS = [[5, 17, 300, 2], [9, 8, 7, 6, 5, 4, 3], [1000]]


@pytest.fixture
def genai_export(family_dirs, built):
    """(family, **params) -> its GenAI artifact, built once."""
    return lambda family, **params: built("export_genai", family_dirs[family], **params)


def test_one_onnx_runtime_serves_both_packages():
    """slimbench[genai] installs GenAI's build against onnxruntime-gpu, the ONNX Runtime this
    project depends on: the CPU ``onnxruntime`` distribution, which would overwrite the same
    ``onnxruntime`` package, is not installed, and an ORT session and a GenAI model run in
    one process."""
    import onnx
    import onnxruntime
    import onnxruntime_genai  # noqa: F401 - imported beside onnxruntime, in either order

    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    assert {"onnxruntime-gpu", "onnxruntime-genai-cuda"} <= installed
    assert "onnxruntime" not in installed and "onnxruntime-genai" not in installed
    requires = importlib.metadata.requires("onnxruntime-genai-cuda")
    assert any(r.startswith("onnxruntime-gpu") for r in requires)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)],
                                   ir_version=9)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.array([1.0, -2.0], np.float32)})[0].tolist() == [-1, 2]


def test_fp32_runs_as_torch_does(family, family_dirs, genai_export, tmp_path, runs_as_torch):
    """fp32: perplexity within 1e-4 relative of torch's, greedy tokens identical one prompt
    at a time and in a batch, log-probs within 1e-4 (a family GenAI's builder cannot build is
    refused before any work, by name)."""
    if family not in FAMILIES:
        with pytest.raises(UsageError, match=f"builder has no {family} architecture"):
            run_step("export_genai", {}, str(family_dirs[family]), tmp_path / "x")
        assert not (tmp_path / "x").exists()
        return
    out = genai_export(family)
    manifest = read_manifest(out)
    assert manifest.format == "genai" and manifest.recipe == ["export_genai"]
    assert manifest.report["parity"]["max_abs_logit_diff"] <= 1e-4
    audit = manifest.report["quantization"]
    assert audit["nbits_matmuls"] == {} and audit["attention"] == 2  # one per layer
    assert audit["float_matmuls"] == 2 * 5 + 1  # qkv (fused), o, gate, up, down; the head
    runs_as_torch(out, family_dirs[family], "genai")


@pytest.mark.parametrize("family, precision, block", [("qwen2", "int4", 32),
                                                     ("llama", "int4", 64),
                                                     ("llama", "int8", 32)])
def test_weights_are_quantized_as_asked(genai_export, family_dirs, family, precision, block):
    fp32 = genai_export(family)
    out = genai_export(family, precision=precision, block_size=block)
    audit = read_manifest(out).report["quantization"]
    # every weight MatMul (qkv fused by the builder) is MatMulNBits
    assert audit["float_matmuls"] == 0 and audit["nbits_matmuls"] == {precision: 2 * 5 + 1}
    assert audit["block_sizes"] == [block]
    # int4 quantizes a tied embedding with its head (GatherBlockQuantized); an untied one stays
    tied = load_artifact(str(family_dirs[family])).model.config.tie_word_embeddings
    assert audit["quantized_embeddings"] == int(precision == "int4" and tied)
    size, fp32_size = (read_manifest(d).bytes_on_disk for d in (out, fp32))
    assert size < {"int4": 0.35 if tied else 0.7, "int8": 0.8}[precision] * fp32_size
    parity = read_manifest(out).report["parity"]
    assert parity["top1_agreement"] > {"int4": 0.5, "int8": 0.85}[precision]
    rt = make_runtime(load_artifact(str(out)), threads=2)
    assert len(rt.greedy_generate(PROMPTS[0], 8)) == 8


def test_the_latency_scenarios_run_on_an_engine_that_keeps_its_cache(genai_export):
    rt = make_runtime(load_artifact(str(genai_export("llama", precision="int4"))), threads=2)
    decode = decode_latency(rt, context=16, new_tokens=8, repeats=2)
    assert {m.name for m in decode.measurements} == {"decode_ms_per_token"}
    generate = generate_latency(rt, prompt_len=16, new_tokens=8, repeats=2)
    assert {m.name for m in generate.measurements} >= {"ttft_ms", "tpot_ms", "tokens_per_s"}
    batched = generate_latency(rt, prompt_len=16, new_tokens=8, repeats=1, batch=2)
    prefill = prefill_latency(rt, seq_len=16, min_seconds=0.0)
    assert all(m.median > 0 for s in (decode, generate, batched, prefill)
               for m in s.measurements)


def test_a_batch_steps_as_its_rows_alone(genai_export):
    """greedy_start / greedy_step on a batch of equal-length prompts (the batch sweep) give
    each row's own greedy tokens; generations under way at once keep their own caches."""
    rt = make_runtime(load_artifact(str(genai_export("llama"))), threads=2)
    rows = [[9, 8, 7, 6], [5, 17, 300, 2]]
    tokens, state = rt.greedy_start(torch.tensor(rows))
    other, other_state = rt.greedy_start(torch.tensor(rows[:1]))  # a second one, interleaved
    got, alone = [tokens[:, 0].tolist()], [int(other[0, 0])]
    for _ in range(5):
        tokens, state = rt.greedy_step(tokens, state)
        other, other_state = rt.greedy_step(other, other_state)
        got.append(tokens[:, 0].tolist())
        alone.append(int(other[0, 0]))
    assert [list(r) for r in zip(*got, strict=True)] == [rt.greedy_generate(r, 6) for r in rows]
    assert alone == rt.greedy_generate(rows[0], 6)
    _, newer = rt.greedy_step(tokens, state)
    with pytest.raises(ValueError, match="stale generation state"):
        rt.greedy_step(tokens, state)
    with pytest.raises(ValueError, match="keeps its KV cache inside its generator"):
        rt.forward(np.array([[5, 17]]))


def test_a_model_without_a_tokenizer_builds_and_runs_on_ids(tmp_path):
    """A random-weight shape has no tokenizer: built with placeholder token strings, it runs
    on ids as the torch model does, and no tokenizer is written."""
    spec = "shape:llama-135m:num_hidden_layers=1"
    out = tmp_path / "genai"
    run_step("export_genai", {}, spec, out)
    assert not (out / "tokenizer.json").exists()
    rt = make_runtime(load_artifact(str(out)), threads=2)
    torch_rt = make_runtime(load_artifact(spec))
    assert rt.greedy_generate(PROMPTS[1], 8) == torch_rt.greedy_generate(PROMPTS[1], 8)


def test_refusals(family_dirs, family_exports, genai_export, tmp_path, capsys, monkeypatch):
    from slimbench.compress.loader import LoadOptions

    with pytest.raises(UsageError, match="is an ONNX Runtime GenAI artifact: it runs on cpu"):
        load_artifact(str(genai_export("llama")), LoadOptions(dtype="float16"))
    llama = str(family_dirs["llama"])
    with pytest.raises(UsageError, match="precision must be one of fp32, int8, int4"):
        run_step("export_genai", {"precision": "int2"}, llama, tmp_path / "int2")
    with pytest.raises(UsageError, match="block_size must be one of 16, 32, 64, 128, 256"):
        run_step("export_genai", {"precision": "int4", "block_size": 48}, llama, tmp_path / "b")
    with pytest.raises(UsageError, match="export_genai needs a float32 torch model; "
                                         ".* is an ONNX artifact"):
        run_step("export_genai", {}, str(family_exports("llama")), tmp_path / "onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # as if the extra were missing
    capsys.readouterr()
    code = main(["compress", llama, "--step", "export_genai", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'slimbench[genai]'" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "x").exists()

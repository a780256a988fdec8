"""The ONNX path on every architecture family: export, perplexity, cached decode, int8, fusions.

A test taking ``family`` runs once per family of tests/conftest.py (its pytest_generate_tests).
"""

import copy

import numpy as np
import onnx
import pytest
import torch

from slimbench.bench.cli import main
from slimbench.bench.runtimes import make_runtime
from slimbench.bench.runtimes.ort_runtime import OrtRuntime
from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.artifact import read_manifest
from slimbench.compress.loader import load_artifact
from slimbench.compress.steps import run_step
from slimbench.tasks.generation import run_task

# the tiny models: 2 blocks, 4 query heads of 16; llama/qwen2 keep 2 KV heads (GQA)
KV_HEADS = {"gpt2": 4, "llama": 2, "qwen2": 2, "gpt_neox": 4, "opt": 4}
# weight MatMuls per block: q,k,v,o (fused qkv counts once) + the MLP's projections
BLOCK_MATMULS = {"gpt2": 4, "llama": 7, "qwen2": 7, "gpt_neox": 4, "opt": 6}
OPTIMIZER_TYPE = {"gpt2": "gpt2", "llama": "qwen3", "qwen2": "qwen3", "gpt_neox": "gpt_neox",
                  "opt": "bert"}
PROMPT = "def read(self, n=-1):\n    "


@pytest.fixture(scope="module")
def exported(family_exports):
    """family -> its fp32 ONNX artifact (shared by the session: conftest.py)."""
    return family_exports


def test_cli_export_matches_torch_with_kv_head_cache(family, exported):
    out = exported(family)
    m = read_manifest(out)
    assert m.format == "onnx" and m.recipe == ["export_onnx"]
    assert m.report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert m.report["parity"]["greedy_identical"] == m.report["parity"]["greedy_prompts"] == 2
    # every projection a MatMul with a constant weight (OPT's 2-D Gemm rewritten)
    assert "Gemm" not in m.report["graph"]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    kv = KV_HEADS[family]
    inputs = {v.name: dims(v) for v in graph.input}
    outputs = {v.name: dims(v) for v in graph.output}
    # ids, mask, positions, logits index / logits + key and value per block; every size
    # symbolic: batch, sequence, past and the positions that get logits
    assert list(inputs)[:4] == ["input_ids", "attention_mask", "position_ids", "logits_index"]
    assert len(inputs) == 4 + 2 * 2 and len(outputs) == 1 + 2 * 2
    assert inputs["input_ids"] == inputs["position_ids"] == ["batch", "seq"]
    assert inputs["attention_mask"] == ["batch", "total"] and inputs["logits_index"] == ["keep"]
    assert outputs["logits"] == ["batch", "keep", 4096]
    assert m.report["parity"]["padded_max_abs_logit_diff"] <= 1e-4
    for i in range(2):
        for kind in ("key", "value"):
            assert inputs[f"past_{kind}_{i}"] == ["batch", kv, "past", 16]
            assert outputs[f"present_{kind}_{i}"] == ["batch", kv, "total", 16]


def test_ort_perplexity_equals_torch(family, family_dirs, exported):
    # the task code of `slimbench eval SPEC --task perplexity --limit 2`
    scores = []
    for spec in (str(family_dirs[family]), str(exported(family))):
        loaded = load_artifact(spec)
        rt = make_runtime(loaded, threads=2)
        scores.append(run_task(rt, loaded.tokenizer, "perplexity", limit=2, resamples=0))
    torch_res, ort_res = (s.score for s in scores)
    assert ort_res.n == torch_res.n == 2
    assert ort_res.scores["tokens"] == torch_res.scores["tokens"] > 100
    # fp32 both sides: a token's NLL moves <= 2 max|dlogit| (~4e-7 here): >100x margin
    assert ort_res.value == pytest.approx(torch_res.value, rel=1e-4)


def test_ort_cached_decode_equals_torch(family, family_dirs, exported, cached_greedy):
    torch_loaded = load_artifact(str(family_dirs[family]))
    prompt = torch_loaded.tokenizer(PROMPT)["input_ids"]
    torch_rt = TorchRuntime(torch_loaded)
    ort_rt = OrtRuntime(load_artifact(str(exported(family))), threads=2)
    assert ort_rt.kv_heads == KV_HEADS[family] and ort_rt.max_length == 256
    want_tokens, want_logits = cached_greedy(torch_rt, prompt, 16)
    got_tokens, got_logits = cached_greedy(ort_rt, prompt, 16)
    assert got_tokens == want_tokens
    for got, want in zip(got_logits, want_logits, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # the protocol's loop (IO-bound KV buffers reused step to step) gives the same tokens
    assert ort_rt.greedy_generate(prompt, 16) == torch_rt.greedy_generate(prompt, 16) \
        == want_tokens
    # the profiled prefill feeds an empty past of the graph's (KV-head) shape
    placement = ort_rt.placement()
    assert placement.primary == "CPUExecutionProvider" and placement.fallback_nodes == 0


@pytest.mark.parametrize("family", ["llama"])
def test_kv_buffers_grow_past_their_first_capacity(family, family_dirs, exported, monkeypatch,
                                                   cached_greedy):
    # a pool sized for 10 positions must double three times during 40 new tokens, carrying
    # the cache over each time: tokens and logits stay those of the torch model
    from slimbench.bench.runtimes import ort_runtime

    monkeypatch.setattr(ort_runtime, "INITIAL_POSITIONS", 8)
    torch_loaded = load_artifact(str(family_dirs[family]))
    prompt = torch_loaded.tokenizer(PROMPT)["input_ids"][:5]
    ort_rt = OrtRuntime(load_artifact(str(exported(family))), threads=2)
    want_tokens, want_logits = cached_greedy(TorchRuntime(torch_loaded), prompt, 40)
    got_tokens, got_logits = cached_greedy(ort_rt, prompt, 40)
    assert ort_rt._pool.capacity == 80  # 10 -> 20 -> 40 -> 80
    assert got_tokens == want_tokens
    for got, want in zip(got_logits, want_logits, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert ort_rt.greedy_generate(prompt, 40) == want_tokens  # reused pool, rebuilt bindings


def test_ort_dynamic_int8_quantizes_every_block_matmul(family, exported, tmp_path):
    m = run_step("ort_dynamic_int8", {}, str(exported(family)), tmp_path / "int8")
    q, per_block = m.report["quantization"], BLOCK_MATMULS[family]
    assert q["blocks"] == q["layers"] == 2 and q["expected_per_block"] == per_block
    assert q["block_matmuls"] == q["block_matmuls_int8"] == 2 * per_block
    assert q["per_block_int8"] == {"0": per_block, "1": per_block}
    assert q["lm_head"] == "int8" and q["float_weight_matmuls_left"] == 0
    assert m.report["parity"]["top1_agreement"] >= 0.8


def test_int8_audit_holds_blocks_to_their_projections(make_family_model, tmp_path,
                                                      monkeypatch):
    # without the export's Gemm -> MatMul rewrite OPT's fc1/fc2 stay Gemm, which the static
    # (QDQ) quantizer leaves float: the graph then shows 4 weight MatMuls per block, all int8,
    # and only the architecture's 6 projections reveal the gap
    from slimbench.compress import onnx_export, quant_ort
    from slimbench.compress.onnx_model import OnnxModel, onnx_op_counts
    from slimbench.errors import CompressionError

    monkeypatch.setattr(onnx_export, "_gemm_to_matmul", lambda graph: 0)
    model = make_family_model("opt")
    src = onnx_export.export_onnx(copy.deepcopy(model), tmp_path, onnx_export.ExportOnnxConfig())
    assert onnx_op_counts(src)["Gemm"] == 4
    config = quant_ort.OrtStaticInt8Config(samples=1, seq_len=8)
    audit = quant_ort.ort_static_int8(src, tmp_path / "int8.onnx", config,
                                      OnnxModel(src, model.config), None)
    assert audit.block_matmuls == audit.block_matmuls_int8 == 8
    assert audit.per_block_int8 == {"0": 4, "1": 4} and audit.expected_per_block == 6
    with pytest.raises(CompressionError, match="each block has 6 projections"):
        quant_ort.require_onnx_coverage(audit)


@pytest.mark.parametrize("family", ["llama"])
def test_ort_static_int8_covers_a_gqa_family(family, exported, tmp_path):
    m = run_step("ort_static_int8", {"samples": 2, "seq_len": 16}, str(exported(family)),
                 tmp_path / "static")
    q = m.report["quantization"]
    assert q["block_matmuls"] == q["block_matmuls_int8"] == 14
    assert q["per_block_int8"] == {"0": 7, "1": 7} and q["lm_head"] == "int8"
    assert (q["calibration"]["samples"], q["calibration"]["seq_len"]) == (2, 16)
    graph = m.report["graph"]
    assert graph["QuantizeLinear"] > 0 and graph["DequantizeLinear"] > 0


def test_ort_optimize_keeps_parity(family, exported, tmp_path):
    m = run_step("ort_optimize", {}, str(exported(family)), tmp_path / "opt")
    assert m.report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert m.report["parity"]["decode_max_abs_logit_diff"] <= 1e-4
    assert m.report["parity"]["greedy_identical"] == m.report["parity"]["greedy_prompts"] == 2
    fusions = m.report["fusions"]
    assert fusions["model_type"] == OPTIMIZER_TYPE[family]
    # no attention pattern of ORT's matches the DynamicCache export; EmbedLayerNormalization
    # (positions from 0 whatever the past) is switched off
    assert not {"Attention", "MultiHeadAttention", "GroupQueryAttention",
                "EmbedLayerNormalization"} & set(fusions["applied"])
    # the fused graph's projections are still weight MatMuls the quantizer covers
    q = run_step("ort_dynamic_int8", {}, str(tmp_path / "opt"), tmp_path / "opt-int8")
    assert q.report["quantization"]["block_matmuls_int8"] == 2 * BLOCK_MATMULS[family]


def test_export_refuses_an_unknown_family(ref_tokenizer, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("bloom", vocab_size=4096, n_layer=2, hidden_size=64, n_head=4)
    src = tmp_path / "bloom"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
    ref_tokenizer.save_pretrained(src)
    out = tmp_path / "out"
    rc = main(["compress", str(src), "--step", "export_onnx", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "export_onnx: model type 'bloom' is not an architecture slimbench knows" in err
    for family in ("gpt2", "llama", "gpt_neox", "opt"):
        assert f"{family} (" in err
    assert not out.exists()

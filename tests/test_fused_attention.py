"""Fused attention (export_onnx attention=fused): one GroupQueryAttention node per layer that
updates a shared KV buffer in place, right-padded batches. Held to the torch model on every
family: prefill and padded logits, cached decode, buffer growth, batched generation,
perplexity; and the ORT quantizers keep working on it.

A test taking ``family`` runs once per family of tests/conftest.py (its pytest_generate_tests).
"""


import numpy as np
import onnx
import pytest
import torch

from slimbench.bench.runtimes import make_runtime
from slimbench.bench.runtimes.ort_runtime import OrtRuntime
from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.artifact import read_manifest
from slimbench.compress.loader import load_artifact
from slimbench.compress.onnx_export import ExportOnnxConfig, _FusedKVWrapper
from slimbench.compress.onnx_model import OnnxModel
from slimbench.compress.steps import run_step
from slimbench.errors import UsageError
from slimbench.tasks.generation import run_task

PROMPT = "def read(self, n=-1):\n    return self."
# weight MatMuls per block (as in test_families_onnx.py): q,k,v,o (fused qkv once) + the MLP's
BLOCK_MATMULS = {"gpt2": 4, "llama": 7, "qwen2": 7, "gpt_neox": 4, "opt": 6}


@pytest.fixture(scope="module")
def fused_exports(family_exports):
    """family -> its fp32 fused-attention ONNX artifact (shared by the session: conftest)."""
    return lambda family: family_exports(family, "fused")


def test_fused_export_has_one_attention_node_per_layer_and_parity(family, fused_exports):
    out = fused_exports(family)
    m = read_manifest(out)
    assert m.report["attention"] == "fused"
    # prefill parity and the right-padded batch (rows lose their last 4i tokens to pads)
    assert m.report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert m.report["parity"]["padded_max_abs_logit_diff"] <= 1e-4
    assert m.report["parity"]["greedy_identical"] == m.report["parity"]["greedy_prompts"]
    ops = m.report["graph"]
    assert ops["GroupQueryAttention"] == 2  # the tiny models have 2 layers
    assert "Softmax" not in ops  # no attention left as separate ops
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert {p.key: p.value for p in proto.metadata_props}["slimbench.attention"] == "fused"


def test_eager_reference_of_the_op_equals_the_model(family, make_family_model):
    # the wrapper run in torch (the op's eager reference, which tracing runs) reproduces the
    # unfused model on an unpadded batch, prefill after a past included
    model = make_family_model(family)
    wrapper = _FusedKVWrapper(model).eval()
    ids = torch.randint(0, 4096, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model(ids).logits
        kv_heads = model.config.num_key_value_heads if hasattr(
            model.config, "num_key_value_heads") else model.config.num_attention_heads
        empty = [torch.zeros(2, kv_heads, 0, 16) for _ in range(4)]
        mask = torch.ones(2, 6, dtype=torch.long)
        logits, *present = wrapper(ids[:, :6], mask, torch.arange(6).repeat(2, 1),
                                   torch.arange(6), *empty)
        np.testing.assert_allclose(logits, want[:, :6], atol=1e-5, rtol=0)
        mask = torch.ones(2, 9, dtype=torch.long)
        logits, *_ = wrapper(ids[:, 6:], mask, torch.arange(6, 9).repeat(2, 1),
                             torch.tensor([-1]), *present)
    np.testing.assert_allclose(logits[:, 0], want[:, -1], atol=1e-5, rtol=0)


def test_fused_cached_decode_equals_torch_in_one_shared_buffer_set(family, family_dirs,
                                                                   fused_exports, cached_greedy):
    torch_loaded = load_artifact(str(family_dirs[family]))
    prompt = torch_loaded.tokenizer(PROMPT)["input_ids"]
    ort_rt = OrtRuntime(load_artifact(str(fused_exports(family))), threads=2)
    assert ort_rt.fused and ort_rt.padding_side == "right"
    want_tokens, want_logits = cached_greedy(TorchRuntime(torch_loaded), prompt, 16)
    got_tokens, got_logits = cached_greedy(ort_rt, prompt, 16)
    assert got_tokens == want_tokens
    for got, want in zip(got_logits, want_logits, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # one buffer per past/present tensor, read and written in place by every step
    pool = ort_rt._pool
    assert pool.shared and pool.sets[0] is pool.sets[1] and len(pool.sets[0]) == 4
    assert ort_rt.greedy_generate(prompt, 16) == want_tokens


def test_fused_batches_are_right_padded_and_equal_one_at_a_time(family, family_dirs,
                                                                fused_exports, ragged_prompts):
    loaded = load_artifact(str(family_dirs[family]))
    ort_rt = OrtRuntime(load_artifact(str(fused_exports(family))), threads=2)
    prompts = ragged_prompts(loaded.tokenizer)
    alone = [ort_rt.greedy_generate(p, 12) for p in prompts]
    assert alone == [TorchRuntime(loaded).greedy_generate(p, 12) for p in prompts]
    assert ort_rt.greedy_generate_batch(prompts, 12) == alone
    # per-row stops: a row ends right after its own stop token, the others go on
    stop = frozenset({alone[2][3]})
    cut = [a[: next((i + 1 for i, t in enumerate(a) if t in stop), len(a))] for a in alone]
    assert ort_rt.greedy_generate_batch(prompts, 12, stop) == cut


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fused_buffers_grow_row_by_row(family, family_dirs, fused_exports, monkeypatch,
                                       ragged_prompts):
    # a pool of 2 x the longest prompt doubles during 40 new tokens: every row keeps its own
    # prefix (the buffers are (batch, heads, capacity, head size), not a flat prefix)
    from slimbench.bench.runtimes import ort_runtime

    monkeypatch.setattr(ort_runtime, "INITIAL_POSITIONS", 8)
    loaded = load_artifact(str(family_dirs[family]))
    prompts = [p[:6] for p in ragged_prompts(loaded.tokenizer)][:2] + [[5, 6]]
    ort_rt = OrtRuntime(load_artifact(str(fused_exports(family))), threads=2)
    want = [TorchRuntime(loaded).greedy_generate(p, 40) for p in prompts]
    assert ort_rt.greedy_generate_batch(prompts, 40) == want
    assert ort_rt._pool.capacity == 48  # 12 -> 24 -> 48


def test_fused_perplexity_equals_torch(family, family_dirs, fused_exports):
    scores = []
    for spec in (str(family_dirs[family]), str(fused_exports(family))):
        loaded = load_artifact(spec)
        scores.append(run_task(make_runtime(loaded, threads=2), loaded.tokenizer, "perplexity",
                               limit=2, resamples=0))
    torch_res, ort_res = (s.score for s in scores)
    assert ort_res.scores["tokens"] == torch_res.scores["tokens"] > 100
    # fp32 both sides: a token's NLL moves <= 2 max|dlogit| (~4e-7 here): >100x margin
    assert ort_res.value == pytest.approx(torch_res.value, rel=1e-4)


@pytest.mark.parametrize("family", ["gpt2"])
def test_fused_graph_refuses_left_padding(family, fused_exports):
    loaded = load_artifact(str(fused_exports(family)))
    model: OnnxModel = loaded.model
    ids = np.ones((2, 4), np.int64)
    left = np.array([[1, 1, 1, 1], [0, 1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        model.feeds(ids, attention_mask=left)
    model.feeds(ids, attention_mask=left[:, ::-1])  # the same row, right-padded: accepted


def test_attention_option_is_checked():
    with pytest.raises(UsageError, match="attention must be one of ops, fused"):
        ExportOnnxConfig(attention="flash")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_quantizers_keep_the_fused_graph(family, family_dirs, fused_exports, family_exports,
                                         tmp_path, cached_greedy):
    # dynamic int8 and weight-only int4 on a fused graph: every block MatMul quantized, the
    # attention node kept, the graph still fused (metadata), and as close to its parent as
    # the same step on the unfused export is to its own (the same weights are quantized).
    # (Batched == one at a time under int8 is tested on the reference, whose predictions
    # are not the near-ties of a random tiny model: dynamic int8 quantizes a whole batch's
    # activations with one scale.)
    for step, params, op in (("ort_dynamic_int8", {}, "DynamicQuantizeLinear"),
                             ("ort_weight_int4", {"block_size": 16}, "MatMulNBits")):
        m = run_step(step, params, str(fused_exports(family)), tmp_path / step)
        ops = run_step(step, params, str(family_exports(family)), tmp_path / f"{step}-ops")
        assert m.report["graph"]["GroupQueryAttention"] == 2 and m.report["graph"][op] >= 1
        assert "GroupQueryAttention" not in ops.report["graph"]
        q = m.report["quantization"]
        assert q["blocks"] == 2 and q["expected_per_block"] == BLOCK_MATMULS[family]
        assert q["per_block_int8" if op != "MatMulNBits" else "per_block_int4"] == \
            {"0": BLOCK_MATMULS[family], "1": BLOCK_MATMULS[family]}
        # both graphs on this CPU's int8/int4 kernels; they differ only where fp32 attention
        # noise flips an activation's rounding: top-1 over 256 positions, 5 may flip
        fused, unfused = m.report["parity"], ops.report["parity"]
        assert fused["top1_agreement"] == pytest.approx(unfused["top1_agreement"], abs=0.02)
        assert fused["max_abs_logit_diff"] == pytest.approx(unfused["max_abs_logit_diff"],
                                                            rel=0.1)
        rt = OrtRuntime(load_artifact(str(tmp_path / step)), threads=2)
        assert rt.fused and rt.padding_side == "right"
        prompt = load_artifact(str(family_dirs[family])).tokenizer(PROMPT)["input_ids"]
        tokens, _ = cached_greedy(rt, prompt, 8)
        assert rt.greedy_generate(prompt, 8) == tokens

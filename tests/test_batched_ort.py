"""Batched ONNX Runtime generation: the graph's attention_mask / position_ids / logits_index
inputs (export_onnx version 2), left-padded batches through the IO-bound decode loop, logits
of the last position only, and artifacts of the old interface (no mask input) still running.

A test taking ``family`` runs once per family of tests/conftest.py (its pytest_generate_tests).
"""

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from slimbench.bench.runtimes.ort_runtime import OrtRuntime
from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.arch import kv_shape, n_layers
from slimbench.compress.conv1d import normalize_conv1d
from slimbench.compress.loader import load_artifact
from slimbench.compress.onnx_export import _cache_kw
from slimbench.compress.onnx_model import OnnxModel, kv_names, positions_from_mask
from slimbench.compress.steps import run_step
from slimbench.tasks.generation import run_task


@pytest.fixture(scope="module")
def exported(family_dirs, family_exports):
    """family -> (torch LoadedModel, OrtRuntime of its fp32 export), loaded once."""
    done = {}

    def get(family: str):
        if family not in done:
            done[family] = (load_artifact(str(family_dirs[family])),
                            OrtRuntime(load_artifact(str(family_exports(family))), threads=2))
        return done[family]

    return get


def _left_padded(prompts):
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return ids, mask


def _artifact_of(rt: OrtRuntime):
    """A new LoadedModel of ``rt``'s artifact (info and tokenizer; a graph may be swapped in)."""
    return load_artifact(str(rt.onnx.path.parent))


def _np(logits) -> np.ndarray:
    return logits.float().numpy() if isinstance(logits, torch.Tensor) else logits


def test_batched_greedy_equals_one_at_a_time_and_torch(family, exported, ragged_prompts):
    loaded, ort_rt = exported(family)
    torch_rt = TorchRuntime(loaded)
    prompts = ragged_prompts(loaded.tokenizer)
    assert ort_rt.batched_generation and ort_rt.onnx.has_mask
    alone = [ort_rt.greedy_generate(p, 12) for p in prompts]
    assert ort_rt.greedy_generate_batch(prompts, 12) == alone
    assert torch_rt.greedy_generate_batch(prompts, 12) == alone
    # per-row stops: a row ends right after its own stop token, the others go on
    stop = frozenset({alone[2][3]})
    cut = [a[: next((i + 1 for i, t in enumerate(a) if t in stop), len(a))] for a in alone]
    assert ort_rt.greedy_generate_batch(prompts, 12, stop) == cut
    # the same batch size unpadded right after a padded one: the decode mask is all ones again
    same = [prompts[1]] * 3
    assert ort_rt.greedy_generate_batch(same, 12) == [alone[1]] * 3


def test_left_padded_logits_equal_single_runs(family, exported, ragged_prompts):
    loaded, ort_rt = exported(family)
    torch_rt = TorchRuntime(loaded)
    prompts = ragged_prompts(loaded.tokenizer)
    ids, mask = _left_padded(prompts)
    positions = positions_from_mask(mask, ids.shape[1])
    logits, past = ort_rt.forward(ids, attention_mask=mask, position_ids=positions)
    want_torch, _ = torch_rt.forward(ids, attention_mask=mask, position_ids=positions)
    width = ids.shape[1]
    # a decode step through the IO-bound buffers: mask one column longer, positions per row
    token = np.array([[7], [8], [9]])
    step_mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
    step, _ = ort_rt.forward(token, past, attention_mask=step_mask)  # positions from the mask
    for i, p in enumerate(prompts):
        single, _ = ort_rt.forward(np.array([p + [7 + i]]), keep_cache=False)
        real = logits[i, width - len(p):]
        np.testing.assert_allclose(real, single[0, :-1], atol=1e-4, rtol=0)
        np.testing.assert_allclose(real, _np(want_torch)[i, width - len(p):], atol=1e-4, rtol=0)
        np.testing.assert_allclose(step[i, 0], single[0, -1], atol=1e-4, rtol=0)
    # scoring right-padded sequences (mask given to the graph) matches the unpadded runs
    for a, p in zip(ort_rt.next_token_logprobs(prompts), prompts, strict=True):
        single, _ = ort_rt.forward(np.array([p]), keep_cache=False)
        assert a.shape == (len(p), ort_rt.vocab_size)
        np.testing.assert_allclose(np.exp(a).sum(-1), 1.0, atol=1e-6)
        np.testing.assert_allclose(a.argmax(-1), single[0].argmax(-1))


def test_last_only_equals_last_column(family, exported):
    loaded, ort_rt = exported(family)
    torch_rt = TorchRuntime(loaded)
    ids = np.random.default_rng(0).integers(0, ort_rt.vocab_size, size=(2, 9))
    for rt in (ort_rt, torch_rt):
        full, _ = rt.forward(ids, keep_cache=False)
        last, past = rt.forward(ids, last_only=True)
        assert tuple(last.shape) == (2, 1, rt.vocab_size)
        np.testing.assert_allclose(_np(last), _np(full)[:, -1:], atol=1e-5, rtol=0)
        # a decode step: one position either way
        step, _ = rt.forward(ids[:, :1], past, last_only=True)
        full2, _ = rt.forward(np.concatenate([ids, ids[:, :1]], axis=1), keep_cache=False)
        np.testing.assert_allclose(_np(step)[:, 0], _np(full2)[:, -1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama"])
def test_padded_decode_survives_buffer_growth(family, exported, monkeypatch, ragged_prompts):
    # a pool sized for 8 positions doubles during the generation: the mask buffer is
    # reallocated with the KV buffers and rewritten by the next padded step
    from slimbench.bench.runtimes import ort_runtime

    monkeypatch.setattr(ort_runtime, "INITIAL_POSITIONS", 4)
    loaded, ort_rt = exported(family)
    rt = OrtRuntime(_artifact_of(ort_rt), threads=2)  # a fresh pool, built under the patch
    prompts = [p[:4] for p in ragged_prompts(loaded.tokenizer)]
    prompts[0] = prompts[0][:2]
    alone = [rt.greedy_generate(p, 20) for p in prompts]
    assert rt.greedy_generate_batch(prompts, 20) == alone
    assert rt._pool.capacity >= 24


# --- the old graph interface: input_ids + past only (artifacts before export_onnx v2) ---

class _OldWrapper(nn.Module):
    """export_onnx version 1's wrapper: (input_ids, *past) -> (logits, *present)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.layers = model, n_layers(model.config)

    def forward(self, input_ids, *past):
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        out = self.model(input_ids=input_ids, use_cache=True,
                         **{_cache_kw(self.model): DynamicCache(ddp_cache_data=pairs)})
        flat = []
        for layer in getattr(out, _cache_kw(self.model)).layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def export_old_interface(model: nn.Module, path) -> None:
    """The graph export_onnx wrote before version 2 (no mask, position or index inputs)."""
    model = copy.deepcopy(model)
    normalize_conv1d(model)
    cfg = model.config
    past_names, present_names = kv_names(n_layers(cfg))
    past = [torch.zeros(kv_shape(cfg, 2, 4)) for _ in past_names]
    axes = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    axes |= {n: {0: "batch", 2: "past"} for n in past_names}
    axes |= {n: {0: "batch", 2: "total"} for n in present_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_OldWrapper(model).eval(), (torch.zeros(2, 3, dtype=torch.long), *past),
                          str(path), input_names=["input_ids", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes,
                          opset_version=18, dynamo=False, do_constant_folding=True)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_old_interface_graph_still_runs_unbatched(family, exported, tmp_path, ragged_prompts):
    loaded, new_rt = exported(family)
    old_path = tmp_path / "model.onnx"
    export_old_interface(loaded.model, old_path)
    old_model = OnnxModel(old_path, loaded.model.config)
    assert not old_model.has_mask and new_rt.onnx.has_mask
    old_rt = OrtRuntime(dataclasses.replace(_artifact_of(new_rt), model=old_model), threads=2)
    assert old_rt.batched_generation is False
    torch_rt = TorchRuntime(loaded)
    prompts = ragged_prompts(loaded.tokenizer)
    want = [torch_rt.greedy_generate(p, 12) for p in prompts]
    assert [old_rt.greedy_generate(p, 12) for p in prompts] == want
    assert old_rt.greedy_generate_batch(prompts, 12) == want  # one prompt at a time
    # scoring: the same numbers as the new graph (which gets the right-padding mask)
    for a, b in zip(old_rt.token_logprobs(prompts), new_rt.token_logprobs(prompts), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # last_only: computed over every position by the old graph, the last one returned
    ids = np.array([prompts[1]])
    last, _ = old_rt.forward(ids, last_only=True, keep_cache=False)
    full, _ = old_rt.forward(ids, keep_cache=False)
    assert last.shape == (1, 1, old_rt.vocab_size) and np.array_equal(last, full[:, -1:])
    # feeds: exactly the declared inputs; a mask with pads is refused, all ones accepted
    assert set(old_model.feeds(ids)) == {i.name for i in old_rt.session.get_inputs()}
    assert set(new_rt.onnx.feeds(ids)) == {i.name for i in new_rt.session.get_inputs()}
    padded_ids, mask = _left_padded(prompts)
    with pytest.raises(ValueError, match="without an attention_mask input"):
        old_rt.forward(padded_ids, attention_mask=mask)
    old_rt.forward(ids, attention_mask=np.ones_like(ids), keep_cache=False)


# --- the embedded reference: the generation tasks, ORT batch 8 == batch 1 ---

@pytest.fixture(scope="module", params=["ops-fp32", "fused-static_int8"])
def reference_ort(request, tmp_path_factory):
    """The reference as an fp32 export (left-padded batches) and as static int8 of the
    fused-attention export (right-padded batches, one KV buffer set updated in place). Dynamic
    int8 is not batch-invariant (test_dynamic_int8_batches_are_recorded_as_batch_dependent)."""
    root = tmp_path_factory.mktemp("ref-onnx")
    attention, step = request.param.split("-")
    run_step("export_onnx", {"attention": attention}, "reference", root / "fp32")
    out = root / "fp32"
    if step != "fp32":
        run_step(f"ort_{step}", {}, str(out), root / step)
        out = root / step
    loaded = load_artifact(str(out))
    rt = OrtRuntime(loaded, threads=2)
    assert rt.padding_side == ("right" if attention == "fused" else "left")
    assert rt.batch_invariant
    return rt, loaded.tokenizer


@pytest.mark.parametrize("task,limit", [("method_name", 16), ("docstring_summary", 16),
                                        ("docstring_body", 16)])
def test_reference_tasks_batch_8_equals_batch_1(reference_ort, task, limit):
    rt, tok = reference_ort
    one = run_task(rt, tok, task, limit=limit, batch_size=1, resamples=0)
    eight = run_task(rt, tok, task, limit=limit, batch_size=8, resamples=0)
    assert one.score.protocol["batch_size"] == 1 and eight.score.protocol["batch_size"] == 8
    assert eight.score.protocol["padding"].startswith(f"{rt.padding_side}, ")
    assert eight.score.protocol["batch_invariant"]
    assert [e.prediction for e in one.examples] == [e.prediction for e in eight.examples]
    assert one.score.metrics == eight.score.metrics
    assert any(e.prediction for e in eight.examples)  # not vacuously equal


def test_dynamic_int8_batches_are_recorded_as_batch_dependent(family_exports, tmp_path):
    # ORT dynamic int8 quantizes a whole batch's activations with one scale, so a row's
    # logits depend on its batch: the runtime says so and the generation protocol records it
    run_step("ort_dynamic_int8", {}, str(family_exports("gpt2")), tmp_path / "int8")
    loaded = load_artifact(str(tmp_path / "int8"))
    rt = OrtRuntime(loaded, threads=2)
    assert not rt.batch_invariant and rt.onnx.batch_invariant is False
    ids = np.array([[5, 6, 7, 8]])
    alone = rt.forward(ids, keep_cache=False)[0][0]
    loud = np.array([[5, 6, 7, 8], [9, 10, 11, 12]])
    with_other = rt.forward(loud, keep_cache=False)[0][0]
    assert not np.array_equal(alone, with_other)  # the other row moved the scale
    eight = run_task(rt, loaded.tokenizer, "method_name", limit=4, batch_size=4, resamples=0)
    one = run_task(rt, loaded.tokenizer, "method_name", limit=4, batch_size=1, resamples=0)
    assert eight.score.protocol["batch_invariant"] is False
    assert one.score.protocol["batch_invariant"] is True
    fp32 = OrtRuntime(load_artifact(str(family_exports("gpt2"))), threads=2)
    assert fp32.batch_invariant

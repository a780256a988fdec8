"""Every registered runtime is a whole ``CausalLM``: each member present and each answer alike.

Every runtime runs one tiny random GPT-2: the torch model itself, its ONNX export, that
export as an OpenVINO IR, and its CTranslate2 conversion; ONNX Runtime GenAI, whose builder
has no GPT-2, runs a tiny random Llama of the same size, against that Llama in torch. Their
forward with a KV cache must give the full forward's logits, and their greedy tokens must be
identical (the minGPT bar).
"""

import inspect

import numpy as np
import pytest
import torch

from slimbench.bench.runtimes import RUNTIMES, OrtRuntime, TorchRuntime, make_runtime
from slimbench.compress.loader import load_artifact
from slimbench.compress.steps import run_step
from slimbench.tasks.protocol import CausalLM

# what the protocol declares: its attributes and its public methods, read off the class so that
# a member added to the protocol is checked here without editing this file
ATTRIBUTES = sorted(CausalLM.__annotations__)
METHODS = sorted(name for name, obj in vars(CausalLM).items()
                 if inspect.isfunction(obj) and not name.startswith("_"))
TYPES = {"backend": str, "device": str, "max_length": int, "vocab_size": int,
         "batched_generation": bool, "external_cache": bool}


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory, tiny_model, ref_tokenizer, make_family_model):
    """{backend: runtime} for the tiny model as a torch directory, its ONNX export, its
    OpenVINO IR and its CTranslate2 model; GenAI's for a tiny Llama (``torch_of``)."""
    tiny = tmp_path_factory.mktemp("proto") / "tiny"
    tiny_model.save_pretrained(tiny)
    ref_tokenizer.save_pretrained(tiny)
    onnx_dir = tiny.parent / "tiny-onnx"
    run_step("export_onnx", {}, str(tiny), onnx_dir)
    ov_dir = tiny.parent / "tiny-openvino"
    run_step("export_openvino", {}, str(onnx_dir), ov_dir)
    ct2_dir = tiny.parent / "tiny-ct2"
    run_step("export_ctranslate2", {}, str(tiny), ct2_dir)
    llama = tiny.parent / "tiny-llama"
    make_family_model("llama", max_position_embeddings=64).save_pretrained(llama)
    ref_tokenizer.save_pretrained(llama)
    genai_dir = tiny.parent / "tiny-genai"
    run_step("export_genai", {}, str(llama), genai_dir)
    rts = [make_runtime(load_artifact(str(d)), threads=2)
           for d in (tiny, onnx_dir, ov_dir, ct2_dir, genai_dir)]
    out = {rt.backend: rt for rt in rts}
    out["torch-llama"] = make_runtime(load_artifact(str(llama)))
    return out


@pytest.fixture(scope="module")
def torch_of(runtimes):
    """backend -> the torch runtime of the model that backend runs here."""
    return lambda backend: runtimes["torch-llama" if backend == "genai" else "torch"]


def _array(logits) -> np.ndarray:
    return logits.float().cpu().numpy() if isinstance(logits, torch.Tensor) else logits


def test_protocol_declares_what_callers_use():
    assert {"forward", "sync", "placement", "token_logprobs", "next_token_logprobs",
            "greedy_generate", "greedy_generate_batch", "greedy_start",
            "greedy_step"} <= set(METHODS)
    assert set(TYPES) == set(ATTRIBUTES)


def test_every_registered_runtime_is_built(runtimes):
    assert {type(rt) for rt in runtimes.values()} == set(RUNTIMES.values())
    assert type(runtimes["genai"]).__name__ == "GenaiRuntime"
    assert isinstance(runtimes["torch"], TorchRuntime)
    assert isinstance(runtimes["onnxruntime"], OrtRuntime)
    assert type(runtimes["openvino"]).__name__ == "OvRuntime"
    assert type(runtimes["ctranslate2"]).__name__ == "Ct2Runtime"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino", "ctranslate2", "genai"])
def test_runtime_has_every_member(runtimes, backend):
    rt = runtimes[backend]
    assert isinstance(rt, CausalLM)
    for name in ATTRIBUTES:
        assert isinstance(getattr(rt, name), TYPES[name]), name
    for name in METHODS:
        # same parameter names as the protocol, so a caller's keyword works on every runtime
        want = list(inspect.signature(getattr(CausalLM, name)).parameters)[1:]
        assert list(inspect.signature(getattr(rt, name)).parameters) == want, name
    assert (rt.device, rt.max_length, rt.vocab_size) == ("cpu", 64, 4096)
    rt.sync()  # nothing queued on a CPU: returns at once, and must not raise


def test_placement_by_backend(runtimes):
    assert runtimes["torch"].placement() is None
    assert runtimes["openvino"].placement() is None  # its CPU plugin runs the whole graph
    assert runtimes["ctranslate2"].placement() is None
    assert runtimes["genai"].placement() is None
    placed = runtimes["onnxruntime"].placement()
    assert placed.primary == "CPUExecutionProvider" and placed.fallback_nodes == 0


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_cached_forward_equals_full_forward(runtimes, backend):
    rt = runtimes[backend]
    ids = np.random.default_rng(0).integers(0, rt.vocab_size, size=(2, 12))
    full, no_cache = rt.forward(ids, keep_cache=False)
    assert no_cache is None
    full = _array(full)  # (2, 12, V)
    logits, past = rt.forward(ids[:, :8])
    steps = [_array(logits)]
    for t in range(8, 12):  # one token at a time through the cache
        logits, past = rt.forward(ids[:, t: t + 1], past)
        rt.sync()
        steps.append(_array(logits))
    cached = np.concatenate(steps, axis=1)
    assert cached.shape == full.shape == (2, 12, rt.vocab_size)
    np.testing.assert_allclose(cached, full, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "ctranslate2", "genai"])
def test_backends_agree(runtimes, torch_of, backend):
    torch_rt, rt = torch_of(backend), runtimes[backend]
    prompts = [[5, 17, 300, 2], [9, 8, 7, 6, 5, 4, 3], [1000]]
    want = [torch_rt.greedy_generate(p, 24) for p in prompts]
    assert [rt.greedy_generate(p, 24) for p in prompts] == want
    assert rt.greedy_generate_batch(prompts, 24) == want
    assert torch_rt.greedy_generate_batch(prompts, 24) == want
    assert len({tuple(w) for w in want}) > 1  # not one degenerate continuation for all
    for a, b in zip(torch_rt.next_token_logprobs(prompts), rt.next_token_logprobs(prompts),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(torch_rt.token_logprobs(prompts[:2]), rt.token_logprobs(prompts[:2]),
                    strict=True):
        assert a.shape == (len(b),) and a.dtype == np.float64
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_forward_with_mask_positions_and_last_only_agrees(runtimes):
    # the optional forward arguments mean the same on every backend: a left-padded batch,
    # positions from the mask, logits of the last position only, then one cached step
    ort_rt = runtimes["onnxruntime"]
    assert all(rt.batched_generation for rt in runtimes.values())  # every backend batches
    ids = np.array([[0, 0, 0, 5, 17, 300], [9, 8, 7, 6, 5, 4]])
    mask = (ids != 0).astype(np.int64)
    step_mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    got = {}
    for name, rt in runtimes.items():
        # an engine's cache is its generator's (greedy_start below); torch-llama: GenAI's
        if not rt.external_cache or name == "torch-llama":
            continue
        logits, past = rt.forward(ids, attention_mask=mask, last_only=True)
        step, _ = rt.forward(np.array([[11], [12]]), past, attention_mask=step_mask,
                             last_only=True)
        got[name] = (_array(logits), _array(step))
        assert got[name][0].shape == got[name][1].shape == (2, 1, rt.vocab_size)
    for backend in ("onnxruntime", "openvino"):
        for a, b in zip(got["torch"], got[backend], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    # row 0 alone, unpadded, continues exactly as in the batch
    alone, past = ort_rt.forward(ids[:1, 3:], last_only=True)
    np.testing.assert_allclose(alone[0], got["onnxruntime"][0][0], atol=1e-5)
    alone, _ = ort_rt.forward(np.array([[11]]), past)
    np.testing.assert_allclose(alone[0], got["onnxruntime"][1][0], atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino", "ctranslate2", "genai"])
def test_greedy_start_and_steps_generate_what_greedy_generate_does(runtimes, torch_of,
                                                                   backend):
    """What the latency scenarios time on every backend (the engines that keep their cache
    inside, CTranslate2 and GenAI, included): the same tokens as a plain greedy generation."""
    rt = runtimes[backend]
    prompt = [9, 8, 7, 6, 5, 4, 3]
    tokens, state = rt.greedy_start(torch.tensor([prompt]))
    got = [int(_array(tokens)[0, 0])]
    for _ in range(11):
        tokens, state = rt.greedy_step(tokens, state)
        got.append(int(_array(tokens)[0, 0]))
    assert got == torch_of(backend).greedy_generate(prompt, 12)


def test_an_engine_that_keeps_its_cache_says_so(runtimes):
    ct2 = runtimes["ctranslate2"]
    assert not ct2.external_cache
    assert not runtimes["genai"].external_cache
    assert all(rt.external_cache for name, rt in runtimes.items()
               if name not in ("ctranslate2", "genai"))
    with pytest.raises(ValueError, match="keeps its KV cache inside its generator"):
        ct2.forward(np.array([[5, 17]]))
    tokens, old = ct2.greedy_start(torch.tensor([[5, 17, 300]]))
    ct2.greedy_start(torch.tensor([[9, 8]]))  # one generation at a time: the old one ends
    with pytest.raises(ValueError, match="stale generation state"):
        ct2.greedy_step(tokens, old)
    with pytest.raises(ValueError, match="one prompt at a time"):
        ct2.greedy_start(torch.tensor([[5, 17], [9, 8]]))

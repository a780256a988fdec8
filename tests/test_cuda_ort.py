"""ONNX Runtime on CUDA: the frontier's artifacts (fused attention in fp16, weight-only int4,
batched generation) on the CUDA execution provider; skipped cleanly (conftest) where torch sees
no GPU. scripts/gpu_check.sh runs them on a lent machine."""

import numpy as np
import pytest

from slimbench.bench.measure.scenarios import generate_sweep
from slimbench.bench.runtimes.ort_runtime import OrtRuntime
from slimbench.compress.loader import LoadOptions, load_artifact
from slimbench.compress.steps import run_step
from slimbench.tasks.evalsets import load_evalset
from slimbench.tasks.generation import run_task
from slimbench.tasks.perplexity import perplexity

pytestmark = pytest.mark.cuda

TEXTS = ("x = 1", "def read(self, n=-1):\n    return self.", "import os\nclass A:\n    pass\n")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The reference exported with and without fused attention, the fused one cast to fp16
    (ORT's CUDA GroupQueryAttention takes fp16/bf16 only) and the unfused one as int4."""
    root = tmp_path_factory.mktemp("cuda-ort")
    run_step("export_onnx", {}, "reference", root / "ops")
    run_step("export_onnx", {"attention": "fused"}, "reference", root / "fused")
    run_step("ort_fp16", {}, str(root / "fused"), root / "fused-fp16")
    run_step("ort_weight_int4", {"block_size": 32}, str(root / "ops"), root / "int4")
    return root


def _runtime(path, device):
    rt = OrtRuntime(load_artifact(str(path), LoadOptions(device=device)), threads=2)
    if device == "cuda":  # a CUDA session that silently fell back to CPU would prove nothing
        assert rt.session.get_providers()[0] == "CUDAExecutionProvider"
    return rt


def _ppl(rt, tokenizer) -> float:
    texts = [r["text"] for r in load_evalset("lm_stdlib", limit=10)]
    return perplexity(rt, tokenizer, texts).perplexity


@pytest.mark.parametrize("name", ["ops", "fused-fp16", "int4"])
def test_cuda_ort_batched_generation_equals_one_at_a_time(artifacts, name):
    rt = _runtime(artifacts / name, "cuda")
    tok = load_artifact("reference").tokenizer
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    alone = [rt.greedy_generate(p, 16) for p in prompts]
    assert rt.greedy_generate_batch(prompts, 16) == alone
    placement = rt.placement()
    assert placement.primary == "CUDAExecutionProvider"
    if name == "fused-fp16":  # the attention kernel itself runs on the GPU
        assert "GroupQueryAttention" not in placement.fallback_ops


@pytest.mark.parametrize("name,rel", [("ops", 1e-3), ("fused-fp16", 0.02), ("int4", 1e-3)])
def test_cuda_ort_perplexity_matches_cpu(artifacts, name, rel):
    tok = load_artifact("reference").tokenizer
    # fp16 against the fp32 graph on CPU; the others against themselves on CPU
    cpu = _ppl(_runtime(artifacts / ("fused" if name == "fused-fp16" else name), "cpu"), tok)
    assert _ppl(_runtime(artifacts / name, "cuda"), tok) == pytest.approx(cpu, rel=rel)


def test_cuda_ort_generate_sweep_and_tasks(artifacts):
    rt = _runtime(artifacts / "fused-fp16", "cuda")
    sweep = generate_sweep(rt, 32, batches=(1, 4), new_tokens=8, repeats=2)
    assert [s.tag for s in sweep] == ["32", "32x4"]
    assert all(s.measurement("tokens_per_s").median > 0 for s in sweep)
    tok = load_artifact("reference").tokenizer
    one = run_task(rt, tok, "method_name", limit=8, batch_size=1, resamples=0)
    four = run_task(rt, tok, "method_name", limit=8, batch_size=4, resamples=0)
    assert four.score.protocol["padding"].startswith("right, ")
    assert [e.prediction for e in one.examples] == [e.prediction for e in four.examples]
    assert np.isfinite(one.score.metrics["f1"].value)

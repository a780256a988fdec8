"""CUDA paths; skipped cleanly (conftest) where torch sees no GPU."""

import pytest

from slimbench.bench.measure.scenarios import decode_latency, prefill_latency
from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.loader import LoadOptions, load_artifact
from slimbench.tasks.evalsets import load_evalset
from slimbench.tasks.perplexity import perplexity

pytestmark = pytest.mark.cuda


def _ppl(device, dtype="float32"):
    loaded = load_artifact("reference", LoadOptions(device=device, dtype=dtype))
    texts = [r["text"] for r in load_evalset("lm_stdlib", limit=20)]
    return perplexity(TorchRuntime(loaded), loaded.tokenizer, texts).perplexity, loaded


def test_cuda_fp32_matches_cpu():
    cpu, cpu_model = _ppl("cpu")
    gpu, gpu_model = _ppl("cuda")
    assert gpu == pytest.approx(cpu, rel=1e-4)
    prompt = cpu_model.tokenizer("def read_config(path):\n    ")["input_ids"]
    assert (TorchRuntime(gpu_model).greedy_generate(prompt, 24)
            == TorchRuntime(cpu_model).greedy_generate(prompt, 24))


def test_cuda_fp16_close_to_fp32():
    fp32, _ = _ppl("cuda")
    fp16, loaded = _ppl("cuda", "float16")
    assert loaded.info.dtype == "float16"
    assert fp16 == pytest.approx(fp32, rel=0.02)


def test_cuda_latency_scenarios_synchronise():
    loaded = load_artifact("shape:gpt2", LoadOptions(device="cuda", dtype="float16"))
    rt = TorchRuntime(loaded)
    pre = prefill_latency(rt, seq_len=128, min_seconds=0.2)
    dec = decode_latency(rt, context=128, new_tokens=16, repeats=3)
    assert pre.measurement("prefill_ms").median > 0
    assert dec.measurement("decode_ms_per_token").median > 0


def test_cuda_fp16_artifact(tmp_path):
    from slimbench.compress.steps import run_step

    run_step("torch_cast", {"dtype": "float16"}, "reference", tmp_path / "fp16")
    fp32, _ = _ppl("cuda")
    loaded = load_artifact(str(tmp_path / "fp16"), LoadOptions(device="cuda"))
    assert loaded.info.dtype == "float16"
    texts = [r["text"] for r in load_evalset("lm_stdlib", limit=20)]
    fp16 = perplexity(TorchRuntime(loaded), loaded.tokenizer, texts).perplexity
    assert fp16 == pytest.approx(fp32, rel=0.02)


def test_cuda_distillation_trains_and_returns_cpu_weights(tmp_path):
    from slimbench.compress.steps import run_step

    m = run_step("distill", {"student_layers": 2, "steps": 20, "batch_size": 4, "seq_len": 64,
                             "warmup": 2, "eval_every": 10, "device": "cuda"},
                 "reference", tmp_path / "student")
    history = m.report["training"]["history"]
    vals = [h["val_perplexity"] for h in history if "val_perplexity" in h]
    assert len(vals) == 2 and vals[-1] < vals[0]
    assert load_artifact(str(tmp_path / "student")).model.config.n_layer == 2

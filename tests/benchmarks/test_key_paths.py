"""pytest-benchmark timings of the key paths, driven by the harness's own runtimes.

Not part of `make test` (timing is not a correctness check). Save a baseline, then compare:

    .venv/bin/python -m pytest tests/benchmarks --benchmark-enable --benchmark-save=base
    .venv/bin/python -m pytest tests/benchmarks --benchmark-enable \\
        --benchmark-compare --benchmark-compare-fail=median:10%
"""

import numpy as np
import pytest
import torch

from slimbench.bench.measure.environment import set_threads
from slimbench.bench.runtimes import make_runtime
from slimbench.compress.loader import load_artifact
from slimbench.compress.steps import run_step


@pytest.fixture(scope="module")
def torch_rt():
    set_threads(2)
    return make_runtime(load_artifact("reference"))


@pytest.fixture(scope="module")
def ort_rt(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "onnx"
    run_step("export_onnx", {}, "reference", out)
    return make_runtime(load_artifact(str(out)), threads=2)


def _prompt(n=128):
    return torch.randint(0, 4096, (1, n), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_prefill_128(benchmark, backend, request):
    rt = request.getfixturevalue(f"{backend}_rt")
    ids = _prompt() if backend == "torch" else _prompt().numpy()
    benchmark.pedantic(lambda: rt.forward(ids), rounds=30, warmup_rounds=3)


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_decode_32_tokens_after_128(benchmark, backend, request):
    rt = request.getfixturevalue(f"{backend}_rt")
    prompt = _prompt() if backend == "torch" else _prompt().numpy()

    def setup():
        return (rt.forward(prompt),), {}

    def decode(state):
        logits, past = state
        for _ in range(32):
            logits, past = rt.forward(logits[:, -1:].argmax(-1), past)

    benchmark.pedantic(decode, setup=setup, rounds=10, warmup_rounds=1)


def test_perplexity_windows(benchmark, torch_rt):
    batch = [list(np.random.default_rng(0).integers(0, 4096, 256)) for _ in range(8)]
    benchmark.pedantic(lambda: torch_rt.token_logprobs(batch), rounds=10, warmup_rounds=1)

import copy

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.loader import load_artifact
from slimbench.tasks.fidelity import FidelityConfig, distribution_stats, fidelity
from slimbench.tasks.perplexity import PerplexityConfig

TEXTS = ["def add(a, b):\n    return a + b\n" * 4,
         "import os\n\nclass Walker:\n    def walk(self, top):\n        yield from os.walk(top)\n"]
CFG = FidelityConfig(PerplexityConfig(16, 8, batch_size=4), prompts=2, prompt_tokens=8,
                     new_tokens=8)


def test_distribution_stats_by_hand():
    p = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]))
    q = np.log(np.array([[0.25, 0.5, 0.25], [0.2, 0.5, 0.3]]))
    agree, kl = distribution_stats(p, q)
    assert agree == 1  # row 0 argmax 0 vs 1; row 1 both 1
    expected = (0.5 * np.log(2) + 0.25 * np.log(0.5)) + (0.1 * np.log(0.5) + 0.6 * np.log(1.2))
    assert kl == pytest.approx(expected, abs=1e-12)


def test_next_token_logprobs_match_token_logprobs(tiny_dir):
    rt = TorchRuntime(load_artifact(str(tiny_dir)))
    batch = [[5, 9, 2, 7, 1], [3, 4]]
    full = rt.next_token_logprobs(batch)
    picked = rt.token_logprobs(batch)
    assert [f.shape for f in full] == [(5, 4096), (2, 4096)]
    for f, p, x in zip(full, picked, batch, strict=True):
        np.testing.assert_allclose(f[np.arange(len(x) - 1), x[1:]], p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.exp(f).sum(-1), 1.0, rtol=1e-9)


@pytest.mark.slow
def test_self_fidelity_is_perfect(tiny_dir):
    loaded = load_artifact(str(tiny_dir))
    rt = TorchRuntime(loaded)
    r = fidelity(rt, rt, loaded.tokenizer, TEXTS, CFG, resamples=50, baseline_spec="self")
    m = r.metrics
    assert r.baseline == "self" and r.prompts == 2
    assert m["top1_agreement"].value == 1.0
    assert m["kl_nats"].value == pytest.approx(0.0, abs=1e-12)
    assert m["greedy_exact_match"].value == 1.0
    assert m["top1_agreement"].ci95 == (1.0, 1.0) and m["top1_agreement"].resamples == 50
    assert m["kl_nats"].higher_is_better is False
    assert m["kl_nats"].info == {"direction": "KL(baseline || variant)"}
    assert r.protocol["texts"] == len(TEXTS) and r.protocol["prompts"] == CFG.prompts
    # the same positions perplexity scores
    from slimbench.tasks.perplexity import perplexity

    assert r.positions == perplexity(rt, loaded.tokenizer, TEXTS, CFG.perplexity).tokens


@pytest.mark.slow
def test_perturbed_copy_drifts(tiny_dir):
    loaded = load_artifact(str(tiny_dir))
    base = TorchRuntime(loaded)
    noisy = copy.deepcopy(loaded)
    model: GPT2LMHeadModel = noisy.model
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.transformer.h.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    variant = TorchRuntime(noisy)
    r = fidelity(variant, base, loaded.tokenizer, TEXTS, CFG, resamples=50)
    kl = r.metrics["kl_nats"]
    assert kl.value > 1e-3
    assert r.metrics["top1_agreement"].value < 1.0
    lo, hi = kl.ci95
    assert 0 < lo <= kl.value <= hi

import math

import pytest
import torch

from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.loader import load_artifact
from slimbench.errors import UsageError
from slimbench.tasks.perplexity import PerplexityConfig, perplexity, windows

TEXTS = [
    "def add(a, b):\n    return a + b\n" * 6,
    "import os\n\nclass Walker:\n    def walk(self, top):\n        yield from os.walk(top)\n",
    "x = 1\n",
]


def test_windows_exact():
    assert windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert windows(3, 8, 4) == [(0, 3, 1)]
    assert windows(1, 8, 4) == []
    # every target 1..n-1 scored exactly once
    for n, ctx, stride in [(37, 8, 3), (64, 16, 16 - 1), (5, 2, 1)]:
        targets = [t for b, e, f in windows(n, ctx, stride) for t in range(f, e)]
        assert targets == list(range(1, n))


def _hf_reference(model, tokenizer, texts, ctx, stride):
    """The Hugging Face perplexity recipe, computed with the model's own loss."""
    nll, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tokenizer.bos_token_id] + tokenizer(text)["input_ids"])
        prev_end = 0
        for begin in range(0, len(ids), stride):
            end = min(begin + ctx, len(ids))
            trg_len = end - prev_end
            inp = ids[begin:end][None]
            labels = inp.clone()
            labels[:, :-trg_len] = -100
            with torch.no_grad():
                loss = model(input_ids=inp, labels=labels).loss
            n_valid = int((labels[:, 1:] != -100).sum())
            nll += float(loss) * n_valid
            count += n_valid
            prev_end = end
            if end == len(ids):
                break
    return math.exp(nll / count), count


@pytest.mark.parametrize("ctx,stride", [(16, 8), (64, 63), (8, 1)])
def test_equals_hf_loss(tiny_dir, ctx, stride):
    loaded = load_artifact(str(tiny_dir))
    rt = TorchRuntime(loaded)
    got = perplexity(rt, loaded.tokenizer, TEXTS, PerplexityConfig(ctx, stride, batch_size=8))
    ref_ppl, ref_count = _hf_reference(loaded.model, loaded.tokenizer, TEXTS, ctx, stride)
    assert got.tokens == ref_count
    assert got.perplexity == pytest.approx(ref_ppl, rel=1e-5)
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert got.bytes == n_bytes
    assert got.bits_per_byte == pytest.approx(got.nll_nats / math.log(2) / n_bytes)
    assert got.protocol["context_length"] == ctx and got.protocol["stride"] == stride


def test_batch_size_does_not_change_result(tiny_dir):
    loaded = load_artifact(str(tiny_dir))
    rt = TorchRuntime(loaded)
    one = perplexity(rt, loaded.tokenizer, TEXTS, PerplexityConfig(16, 8, batch_size=1))
    eight = perplexity(rt, loaded.tokenizer, TEXTS, PerplexityConfig(16, 8, batch_size=8))
    assert one.tokens == eight.tokens
    # other GEMM shapes, not bit-identical: ln ppl moved ~2e-8 (AVX-512 and AVX2 alike)
    assert one.perplexity == pytest.approx(eight.perplexity, rel=1e-6)


def test_bad_protocols(tiny_dir):
    loaded = load_artifact(str(tiny_dir))
    rt = TorchRuntime(loaded)
    with pytest.raises(UsageError, match="stride must be in"):
        PerplexityConfig(16, 16)
    with pytest.raises(UsageError, match="exceeds the model's maximum of 64"):
        perplexity(rt, loaded.tokenizer, TEXTS, PerplexityConfig(128, 64))
    with pytest.raises(UsageError, match="no tokens to score"):
        perplexity(rt, loaded.tokenizer, [""], PerplexityConfig(16, 8, bos=False))

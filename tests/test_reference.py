"""The embedded reference is a real trained model and matches its card."""

import hashlib

import pytest

from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.loader import load_artifact
from slimbench.compress.reference import REFERENCE_DIR, reference_card
from slimbench.tasks.evalsets import load_evalset
from slimbench.tasks.generation import run_task
from slimbench.tasks.perplexity import PerplexityConfig, perplexity


@pytest.fixture(scope="module")
def reference():
    return load_artifact("reference")


def test_reference_matches_card(reference):
    card = reference_card()
    info = reference.info
    assert info.kind == "reference" and info.random_weights is False
    assert info.parameters == card.parameters
    blob = (REFERENCE_DIR / "model.safetensors").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == card.weights_sha256 == info.weights_sha256
    assert len(blob) <= 20 * 1000 * 1000
    assert (REFERENCE_DIR / "MODEL_CARD.md").read_text().count(card.weights_sha256) == 1


@pytest.mark.slow
def test_validation_perplexity_matches_card(reference):
    card = reference_card()
    proto = card.perplexity_protocol
    cfg = PerplexityConfig(proto["context_length"], proto["stride"], proto["bos"])
    texts = [r["text"] for r in load_evalset("lm_stdlib")]
    got = perplexity(TorchRuntime(reference), reference.tokenizer, texts, cfg)
    assert got.perplexity == pytest.approx(card.validation_perplexity, rel=0.01)
    # trained, not random: a random model of this vocab scores near 4096
    assert got.perplexity < 0.02 * reference.model.config.vocab_size
    assert got.perplexity < card.tasks["perplexity"]["trivial_baseline"]["perplexity"] / 2


def test_reference_beats_trivial_baseline_on_each_task():
    card = reference_card()
    for name, task in card.tasks.items():
        base = task["trivial_baseline"][task["metric"]]
        better = task["value"] > base if task["higher_is_better"] else task["value"] < base
        assert better, (name, task["value"], base)


def test_greedy_generation_is_deterministic(reference):
    rt = TorchRuntime(reference)
    a = run_task(rt, reference.tokenizer, "method_name", limit=5)
    b = run_task(rt, reference.tokenizer, "method_name", limit=5)
    assert [e.prediction for e in a.examples] == [e.prediction for e in b.examples]
    assert a.score.value == b.score.value

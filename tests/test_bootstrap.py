import numpy as np
import pytest

from slimbench.tasks.bootstrap import bootstrap_ci
from slimbench.tasks.scorers import METRICS, PERPLEXITY_METRICS


def _mean(rows):
    return float(rows[:, 0].mean())


def test_constant_metric_has_a_point_interval():
    r = bootstrap_ci(np.full((50, 1), 37.5), _mean, resamples=200, seed=3)
    assert r.to_dict() == {"value": 37.5, "ci95": [37.5, 37.5], "resamples": 200, "seed": 3}


def test_interval_contains_estimate_and_is_deterministic():
    rows = np.arange(100, dtype=np.float64)[:, None]  # mean 49.5, sd of the mean ~2.9
    a = bootstrap_ci(rows, _mean, resamples=1000, seed=0)
    assert a == bootstrap_ci(rows, _mean, resamples=1000, seed=0)
    assert a.ci95 != bootstrap_ci(rows, _mean, resamples=1000, seed=1).ci95
    lo, hi = a.ci95
    assert lo < a.value == 49.5 < hi
    # percentile interval ~ mean +- 1.96 * sd/sqrt(n) = 49.5 +- 5.66
    assert hi - lo == pytest.approx(2 * 1.96 * rows.std() / 10, rel=0.15)
    assert bootstrap_ci(rows, _mean, resamples=0).ci95 is None


def test_corpus_metrics_resample_their_counts():
    # BLEU: each resample re-aggregates n-gram counts, so the full sample is corpus BLEU
    preds = ["the cat sat on the mat", "a b c d", "read the file", "x y z"]
    refs = ["the cat sat on a mat", "a b c d", "read a file", "x y w"]
    bleu = METRICS["bleu"]
    r = bootstrap_ci(bleu.stats(preds, refs), bleu.aggregate, resamples=300, seed=0)
    assert r.ci95[0] <= r.value <= r.ci95[1]
    # perplexity: per-text (nll, tokens, bytes); equal per-token NLL in every text -> a point
    rows = np.array([[2.0 * n, n, 3 * n] for n in (5, 10, 20)], dtype=np.float64)
    ppl = bootstrap_ci(rows, PERPLEXITY_METRICS["perplexity"].aggregate, 100, 0)
    assert ppl.value == pytest.approx(np.exp(2.0))
    assert ppl.ci95 == pytest.approx([np.exp(2.0)] * 2)

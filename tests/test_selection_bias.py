"""Selection bias made visible (issue 26): choosing the best of many candidates on the examples
it was chosen on overstates it there; its confirmation on held-out examples does not.

Thirty candidates whose true quality is the baseline's: each candidate's per-text NLL is the
baseline's plus independent zero-mean noise, so every difference between them and the
baseline is chance. The examples are split into tune and test by ``tasks.splits.split_of``,
as a search splits every evaluation set. No model runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from slimbench.tasks.paired import paired_test
from slimbench.tasks.sequential import best_of, degradation_of
from slimbench.tasks.splits import split_of

N, CANDIDATES, SD = 400, 30, 0.3  # examples, candidates, noise (nats per sqrt(token))
PPL = ("perplexity", "perplexity", {}, False)  # kind, metric, options, higher_is_better


def _baseline(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(30, 61, N)
    nll = tokens * rng.uniform(1.8, 2.4, N)
    return [{"task": "wiki", "id": f"doc-{i:04d}", "nll_nats": float(x), "tokens": int(t),
             "bytes": int(4 * t)} for i, (x, t) in enumerate(zip(nll, tokens, strict=True))]


def _equal_candidates(base: list[dict], seed: int) -> dict[str, list[dict]]:
    """Candidates as good as the baseline: its NLLs plus zero-mean noise of sd SD sqrt(tokens)."""
    rng = np.random.default_rng(seed)
    return {f"c{k:02d}": [dict(e, nll_nats=float(e["nll_nats"] + rng.normal(
        0, SD * math.sqrt(e["tokens"])))) for e in base] for k in range(CANDIDATES)}


def _side(examples: list[dict], split: str) -> list[dict]:
    return [e for e in examples if split_of(e["id"]) == split]


def _experiment(seed: int):
    base = _baseline(seed)
    cands = _equal_candidates(base, 100 + seed)
    tune, test = _side(base, "tune"), _side(base, "test")
    name, on_tune = best_of({n: _side(ex, "tune") for n, ex in cands.items()}, tune, *PPL)
    on_test = degradation_of(test, _side(cands[name], "test"), *PPL)
    return base, cands, tune, test, name, on_tune, on_test


def _null_sd(tune: list[dict]) -> float:
    """The spread of ONE equal candidate's relative perplexity change on tune:
    exp(sum of the noise / tokens) - 1, whose sd is about SD / sqrt(tokens)."""
    return SD / math.sqrt(sum(e["tokens"] for e in tune))


def test_the_best_of_thirty_equal_candidates_looks_better_on_tune_only():
    base, cands, tune, test, name, on_tune, on_test = _experiment(0)
    assert (len(tune), len(test)) == (207, 193)  # the split by id: disjoint, covering
    assert {e["id"] for e in tune}.isdisjoint(e["id"] for e in test)
    # one candidate's tune change under the null (no real difference), drawn directly
    rng = np.random.default_rng(7)
    tokens = np.array([e["tokens"] for e in tune], dtype=np.float64)
    null = np.expm1(rng.normal(0, SD * np.sqrt(tokens), (4000, len(tune))).sum(1)
                    / tokens.sum())
    p5 = float(np.percentile(null, 5))
    assert p5 == pytest.approx(-1.645 * _null_sd(tune), rel=0.1)  # about -0.51%

    # chosen on tune, it is "0.6% better than the baseline" there: beyond the 5th percentile
    # of what one equal candidate shows, and its paired 95% interval excludes 0
    assert name == "c10"
    assert on_tune == pytest.approx(-0.00625, abs=5e-5) and on_tune < p5
    chosen_tune = paired_test(tune, _side(cands[name], "tune"), *PPL, "significance",
                              "relative", 0.0)
    lo, hi = (x / chosen_tune.baseline for x in chosen_tune.degradation_ci95)
    assert lo < hi < 0, (lo, hi)  # "significantly better" on the examples it was chosen on
    assert hi == pytest.approx(-0.0004, abs=2e-4)

    # confirmed on test, examples it was not chosen on: no better than the baseline
    assert on_test == pytest.approx(0.00167, abs=5e-5)
    assert abs(on_test) < abs(on_tune) / 3
    confirm = paired_test(test, _side(cands[name], "test"), *PPL, "significance",
                          "relative", 0.0)
    lo, hi = (x / confirm.baseline for x in confirm.degradation_ci95)
    assert lo < 0 < hi, (lo, hi)
    # and on test the chosen one is a typical candidate: not beyond the null's 5th percentile
    assert on_test > p5


def test_the_bias_is_systematic_across_repetitions():
    """Twenty repetitions of the whole experiment: the best-on-tune change is about two null
    standard deviations in its favour every time (the expected minimum of 30 normals is
    -2.04 sd); on test it averages zero."""
    z_tune, z_test = [], []
    for seed in range(20):
        _, _, tune, test, _, on_tune, on_test = _experiment(seed)
        z_tune.append(on_tune / _null_sd(tune))
        z_test.append(on_test / _null_sd(test))
    z_tune, z_test = np.array(z_tune), np.array(z_test)
    assert (z_tune < -1.0).all()
    assert z_tune.mean() == pytest.approx(-2.04, abs=0.35)
    assert abs(z_test.mean()) < 0.6  # its sd over 20 repetitions is 1/sqrt(20) = 0.22
    assert z_test.mean() - z_tune.mean() > 1.5

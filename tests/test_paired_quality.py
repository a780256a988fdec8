"""Paired quality tests (tasks/paired.py): known answers, perplexity and BLEU resampling,
sacrebleu's own paired bootstrap, pairing by id."""

import math
import random

import numpy as np
import pytest
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest, _bootstrap_resample, estimate_ci

from slimbench.errors import UsageError
from slimbench.tasks.bootstrap import bootstrap_ci
from slimbench.tasks.paired import (
    TESTS,
    decide,
    metric_rows,
    pair_examples,
    paired_bootstrap,
    paired_samples,
    paired_test,
)
from slimbench.tasks.scorers import METRICS, PERPLEXITY_METRICS

MEAN = METRICS["exact_match"].aggregate  # the mean metrics' aggregate (ROUGE, SQuAD F1, EM)
PPL = PERPLEXITY_METRICS["perplexity"].aggregate


def _col(x):
    return np.asarray(x, dtype=np.float64)[:, None]


def _both(result, higher_is_better, mode, allowed):
    return {t: decide(result, higher_is_better, t, mode, allowed) for t in TESTS}


# --- known answers on synthetic per-example scores ---------------------------------------
def test_identical_sides_have_a_zero_delta_and_pass_both_tests():
    scores = _col(np.random.default_rng(0).uniform(0, 100, 50))
    r = paired_bootstrap(scores, scores.copy(), MEAN, resamples=500, seed=4)
    assert r.delta == 0.0 and r.ci95 == (0.0, 0.0) and r.se == 0.0
    assert (r.n, r.resamples, r.seed) == (50, 500, 4)
    assert r.baseline == r.candidate == pytest.approx(scores.mean())
    for test, d in _both(r, True, "relative", 0.0).items():
        assert d.status == "pass" and d.test == test, d.why
        assert d.detectable == 0.0 and d.detectable_relative == 0.0
        assert d.degradation == 0.0 and d.degradation_ci95 == (0.0, 0.0)


def test_constant_shift_is_an_exact_delta_with_a_point_interval():
    # integer scores on 32 examples: every resampled mean is exact, so delta is -1 exactly
    base = _col(np.random.default_rng(1).integers(0, 101, 32))
    r = paired_bootstrap(base, base - 1.0, MEAN, resamples=1000, seed=0)
    assert r.delta == -1.0 and r.ci95 == (-1.0, -1.0) and r.se == 0.0
    sig = decide(r, True, "significance", "absolute", 0.9)
    assert sig.status == "fail" and sig.degradation == 1.0
    assert sig.degradation_ci95 == (1.0, 1.0) and sig.allowance == 0.9
    assert "significant" in sig.why and "fail" in sig.why
    assert decide(r, True, "significance", "absolute", 1.1).status == "pass"
    assert decide(r, True, "non_inferiority", "absolute", 0.9).status == "fail"
    assert decide(r, True, "non_inferiority", "absolute", 1.1).status == "pass"
    # the same shift on a lower-is-better metric is an improvement
    better = _both(r, False, "absolute", 0.0)
    assert all(d.status == "pass" and d.degradation == -1.0 for d in better.values())


def test_noisy_drop_passes_significance_but_fails_non_inferiority():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 100, 40)
    cand = base + rng.normal(0, 15, 40)
    cand += (base.mean() - 2.0) - cand.mean()  # a point drop of 2.0
    r = paired_bootstrap(_col(base), _col(cand), MEAN, resamples=1000, seed=0)
    assert r.delta == pytest.approx(-2.0, abs=1e-9)
    lo, hi = r.ci95
    assert lo < -4 and hi > 0.5  # wide, straddles 0
    sig, ni = _both(r, True, "absolute", 1.0).values()
    assert sig.degradation == pytest.approx(2.0, abs=1e-9) and sig.allowance == 1.0
    assert sig.degradation_ci95 == pytest.approx([-hi, -lo])
    assert sig.status == "pass" and "not significant" in sig.why
    assert ni.status == "fail" and "bad end" in ni.why
    # detectable: 2.8 standard errors (significance), the interval's half-width (NI)
    assert sig.detectable == pytest.approx(2.8 * r.se)
    assert ni.detectable == pytest.approx((hi - lo) / 2)
    assert ni.detectable_relative == pytest.approx(ni.detectable / r.baseline)
    # se is the std of the paired resampled deltas, ~ sd(differences) / sqrt(n)
    assert r.se == pytest.approx(np.std(cand - base) / math.sqrt(40), rel=0.15)


def test_relative_and_absolute_allowances():
    base = _col(np.full(20, 50.0))
    r = paired_bootstrap(base, base - 1.0, MEAN, resamples=200, seed=0)
    assert decide(r, True, "significance", "relative", 0.01).allowance == 0.5
    assert decide(r, True, "significance", "relative", 0.01).status == "fail"
    assert decide(r, True, "significance", "relative", 0.03).status == "pass"
    assert decide(r, True, "significance", "absolute", 0.5).status == "fail"
    assert decide(r, True, "significance", "absolute", 1.5).status == "pass"
    assert decide(r, True, "non_inferiority", "relative", 0.03).allowance == 1.5
    # a baseline of 0 leaves no relative allowance, and the why says so
    zero = paired_bootstrap(_col(np.zeros(20)), _col(np.ones(20)), MEAN, 200, 0)
    d = decide(zero, False, "significance", "relative", 0.5)
    assert d.allowance == 0.0 and d.status == "fail" and "baseline of 0" in d.why
    assert d.detectable_relative is None
    for bad in (dict(test="t-test"), dict(mode="percent"), dict(allowed=-0.1),
                dict(allowed=math.nan)):
        args = dict(test="significance", mode="relative", allowed=0.02) | bad
        with pytest.raises(UsageError):
            decide(r, True, **args)


def test_pairing_narrows_the_interval_for_correlated_examples():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 100, 50)  # examples differ a lot from each other...
    cand = base + rng.normal(-0.5, 1.0, 50)  # ...the two sides hardly at all
    paired = paired_bootstrap(_col(base), _col(cand), MEAN, 1000, 0)
    b, c = bootstrap_ci(_col(base), MEAN, 1000, 0), bootstrap_ci(_col(cand), MEAN, 1000, 1)
    unpaired = (c.ci95[1] - b.ci95[0]) - (c.ci95[0] - b.ci95[1])
    width = paired.ci95[1] - paired.ci95[0]
    assert width < 0.05 * unpaired  # ~0.55 vs ~32 points
    assert paired.ci95[1] < 0  # a real 0.5-point drop, resolved only by pairing
    assert c.ci95[0] - b.ci95[1] < 0 < c.ci95[1] - b.ci95[0]


# --- perplexity: per-text rows keep nll and tokens together -------------------------------
def _ppl_texts():
    tokens = np.array([5, 800, 12, 40, 2000, 7, 300, 60, 9, 1200], dtype=np.float64)
    per_token = np.array([4.0, 2.0, 5.0, 3.5, 1.5, 6.0, 2.5, 3.0, 5.5, 1.8])
    base = np.stack([per_token * tokens, tokens, 4 * tokens], axis=1)
    cand = base.copy()
    cand[:, 0] *= 1.0 + 0.01 * np.arange(10)  # every text a little worse, long ones more
    return base, cand


def test_perplexity_point_values_and_resampling_match_a_reference_loop():
    base, cand = _ppl_texts()
    r = paired_bootstrap(base, cand, PPL, resamples=1000, seed=3)
    assert r.baseline == math.exp(base[:, 0].sum() / base[:, 1].sum())
    assert r.candidate == math.exp(cand[:, 0].sum() / cand[:, 1].sum())
    # hand-written reference: one draw of indices, each text's nll with its own token count
    idx = np.random.default_rng(3).integers(0, 10, (1000, 10))
    ref_b = [math.exp(base[i, 0].sum() / base[i, 1].sum()) for i in idx]
    ref_c = [math.exp(cand[i, 0].sum() / cand[i, 1].sum()) for i in idx]
    b, c = paired_samples(base, cand, PPL, 1000, 3)
    np.testing.assert_allclose(b, ref_b, rtol=1e-12)
    np.testing.assert_allclose(c, ref_c, rtol=1e-12)
    lo, hi = np.percentile(np.array(ref_c) - np.array(ref_b), [2.5, 97.5])
    assert r.ci95 == pytest.approx([lo, hi], rel=1e-12)
    # drawing nll and tokens with separate indices would give another (wrong) answer
    idx2 = np.random.default_rng(4).integers(0, 10, (1000, 10))
    split = [math.exp(cand[i, 0].sum() / cand[j, 1].sum()) - math.exp(base[i, 0].sum()
             / base[j, 1].sum()) for i, j in zip(idx, idx2, strict=True)]
    assert abs(np.percentile(split, 97.5) - hi) > 10 * (hi - lo)


def test_higher_perplexity_is_a_degradation():
    base, cand = _ppl_texts()
    r = paired_bootstrap(base, cand, PPL, 1000, 0)
    assert r.delta > 0 and r.ci95[0] > 0
    sig = decide(r, False, "significance", "relative", 0.01)
    assert sig.degradation == r.delta and sig.degradation_ci95 == r.ci95
    assert sig.status == "fail" and sig.allowance == pytest.approx(0.01 * r.baseline)
    # read as higher-is-better, the same change would be an improvement
    assert decide(r, True, "significance", "relative", 0.01).status == "pass"
    assert decide(r, True, "significance", "relative", 0.01).degradation == -r.delta


def test_paired_test_on_perplexity_records():
    base, cand = _ppl_texts()
    rec = [[{"task": "wiki", "id": f"t{i}", "nll_nats": float(s[0]), "tokens": int(s[1]),
             "bytes": int(s[2])} for i, s in enumerate(side)] for side in (base, cand)]
    out = paired_test(rec[0], rec[1][::-1], "perplexity", "perplexity", {}, False,
                      "non_inferiority", "relative", 0.5)
    assert out.metric == "perplexity" and out.why.startswith("perplexity non_inferiority")
    assert out.baseline == pytest.approx(math.exp(base[:, 0].sum() / base[:, 1].sum()))
    assert out == paired_test(rec[0], rec[1], "perplexity", "perplexity", {}, False,
                              "non_inferiority", "relative", 0.5)  # re-paired by id
    assert out.status == "pass" and out.degradation_ci95[1] <= out.allowance
    assert paired_test(rec[0], rec[1], "perplexity", "perplexity", {}, False,
                       "non_inferiority", "relative", 0.001).status == "fail"


# --- BLEU against sacrebleu's own paired bootstrap ----------------------------------------
_WORDS = ("the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "rug", "quickly",
          "slowly", "big", "small", "red", "blue", "house", "tree")


def _mt_outputs(n=30):
    """Deterministic references and two systems: the candidate garbles more words."""
    rnd = random.Random(7)
    refs, base, cand = [], [], []
    for _ in range(n):
        ref = [rnd.choice(_WORDS) for _ in range(rnd.randint(5, 12))]
        refs.append(" ".join(ref))
        for out, p in ((base, 0.3), (cand, 0.4)):
            out.append(" ".join(w if rnd.random() > p else rnd.choice(_WORDS) for w in ref))
    return refs, base, cand


def _records(preds, refs):
    return [{"task": "mt", "id": i, "prediction": p, "reference": r}
            for i, (p, r) in enumerate(zip(preds, refs, strict=True))]


def test_bleu_paired_bootstrap_reproduces_sacrebleu(monkeypatch):
    # What we did: reproduce sacrebleu's resample indices exactly. sacrebleu draws
    # default_rng(seed).choice(n, (R, n)), which is default_rng(seed).integers(0, n, (R, n)),
    # our draw, so with seed = SACREBLEU_SEED (12345) both pick the same sentences. Its
    # per-resample scores then differ from ours only because sacrebleu casts the sufficient
    # statistics to float32 and, under NumPy 2's scalar promotion, computes the n-gram
    # precisions in float32 (~1.4e-6 BLEU here): at float64 its scoring code agrees with ours
    # to 1e-9, and its float32 path to 1e-4 (the interval's ends move at most that much).
    monkeypatch.setenv("SACREBLEU_SEED", "12345")
    refs, base, cand = _mt_outputs()
    br, agg = metric_rows(_records(base, refs), "generate", "bleu", {})
    cr, _ = metric_rows(_records(cand, refs), "generate", "bleu", {})
    n, R, seed = len(refs), 1000, 12345
    sacre_idx = np.random.default_rng(seed).choice(n, size=(R, n), replace=True)
    assert np.array_equal(sacre_idx, np.random.default_rng(seed).integers(0, n, (R, n)))
    b, c = paired_samples(br, cr, agg, R, seed)
    bleu = BLEU()
    exact_b = [bleu._compute_score_from_stats(s.sum(0)).score for s in br[sacre_idx]]
    exact_c = [bleu._compute_score_from_stats(s.sum(0)).score for s in cr[sacre_idx]]
    np.testing.assert_allclose(b, exact_b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(c, exact_c, rtol=0, atol=1e-9)
    # sacrebleu's own resampler (float32), once per system with the same seed: paired
    sb = np.array([s.score for s in _bootstrap_resample(br.tolist(), BLEU(), R)[1]])
    sc = np.array([s.score for s in _bootstrap_resample(cr.tolist(), BLEU(), R)[1]])
    np.testing.assert_allclose(b, sb, rtol=0, atol=1e-4)
    np.testing.assert_allclose(c, sc, rtol=0, atol=1e-4)
    r = paired_bootstrap(br, cr, agg, R, seed)
    assert r.ci95 == pytest.approx(np.percentile(sc - sb, [2.5, 97.5]), abs=1e-4)
    assert r.ci95 == pytest.approx([-19.155, 1.799], abs=1e-3)  # the numbers seen
    # and its public paired test: same system scores, same per-system mean and interval
    _, table = PairedTest([("base", base), ("cand", cand)], {"BLEU": BLEU()}, [refs],
                          test_type="bs", n_samples=R)()
    sacre_base, sacre_cand = table["BLEU"]
    assert r.baseline == pytest.approx(sacre_base.score, abs=1e-9)
    assert r.candidate == pytest.approx(sacre_cand.score, abs=1e-9)
    assert r.delta == pytest.approx(sacre_cand.score - sacre_base.score, abs=1e-9)
    assert estimate_ci(c) == pytest.approx((sacre_cand.mean, sacre_cand.ci), abs=1e-4)
    assert estimate_ci(b) == pytest.approx((sacre_base.mean, sacre_base.ci), abs=1e-4)
    assert 0.04 < sacre_cand.p_value < 0.06 and r.ci95[0] < 0 < r.ci95[1]


def test_bleu_paired_test_end_to_end_and_fast():
    import time

    refs, base, cand = _mt_outputs(20)
    t0 = time.perf_counter()
    out = paired_test(_records(base, refs), _records(cand, refs), "generate", "bleu",
                      {"metric": "bleu", "higher_is_better": True, "tokenize": "13a"},
                      True, "significance", "relative", 0.02)
    assert time.perf_counter() - t0 < 2.0  # 1000 resamples x 20 sentences, both sides
    assert out.baseline == pytest.approx(BLEU().corpus_score(base, [refs]).score)
    assert out.candidate == pytest.approx(BLEU().corpus_score(cand, [refs]).score)
    assert out.n == 20 and out.resamples == 1000
    assert out.status in ("pass", "fail") and out.why.startswith("bleu significance")


# --- pairing by id and metric rows ---------------------------------------------------------
def test_pair_examples_joins_by_id_and_refuses_unpaired_sets():
    base = [{"id": i, "prediction": f"b{i}"} for i in ("a", "b", "c")]
    cand = [{"id": i, "prediction": f"c{i}"} for i in ("c", "a", "b")]
    pb, pc = pair_examples(base, cand)
    assert [e["id"] for e in pb] == [e["id"] for e in pc] == ["a", "b", "c"]
    assert [e["prediction"] for e in pc] == ["ca", "cb", "cc"]
    with pytest.raises(UsageError, match=r"only in the baseline 'b'; only in the candidate 'z'"):
        pair_examples(base, [{"id": i} for i in ("a", "c", "z")])
    many = [{"id": f"x{i}"} for i in range(9)]
    with pytest.raises(UsageError, match=r"'x0', 'x1', 'x2', 'x3', 'x4' and 4 more"):
        pair_examples(base, base + many)
    with pytest.raises(UsageError, match=r"candidate: example id\(s\) 'a' repeat"):
        pair_examples(base, cand + [{"id": "a"}])
    with pytest.raises(UsageError, match="no id"):
        pair_examples([{"prediction": "x"}], cand)


def test_metric_rows_uses_the_metric_options_and_refuses_unknown_metrics():
    preds, refs = ["The cat sat.", "Read it, now!"], ["the cat sat .", "read it , now !"]
    ex = _records(preds, refs)
    rows, agg = metric_rows(ex, "generate", "bleu", {"tokenize": "none", "lowercase": True})
    bleu = METRICS["bleu"]
    assert np.array_equal(rows, bleu.stats(preds, refs, tokenize="none", lowercase=True))
    assert agg(rows) == pytest.approx(BLEU(tokenize="none", lowercase=True)
                                      .corpus_score(preds, [refs]).score)
    default, agg13a = metric_rows(ex, "generate", "bleu")
    assert not np.array_equal(rows, default)  # 13a splits the punctuation off
    assert agg13a(default) == pytest.approx(BLEU().corpus_score(preds, [refs]).score)
    assert agg(rows) != pytest.approx(agg13a(default))
    rouge, _ = metric_rows(ex, "generate", "rouge1", {"use_stemmer": False})
    assert rouge.shape == (2, 1)
    with pytest.raises(UsageError, match="unknown metric 'bleurt'"):
        metric_rows(ex, "generate", "bleurt")
    with pytest.raises(UsageError, match="unknown metric 'bleu' for a perplexity task"):
        metric_rows(ex, "perplexity", "bleu")
    with pytest.raises(UsageError, match="unknown option.*smooth"):
        metric_rows(ex, "generate", "bleu", {"smooth": "exp"})
    with pytest.raises(UsageError, match="lacks 'nll_nats'"):
        metric_rows(ex, "perplexity", "perplexity")

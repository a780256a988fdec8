"""Group-sequential paired screening (tasks/sequential.py) on hand-made per-example records:
early fails and passes, undecided candidates decided at the last look, the per-look level,
the schedule, and the error rate at the allowance by simulation. No model runs."""

from __future__ import annotations

import math
from math import comb

import numpy as np
import pytest

from slimbench.errors import UsageError
from slimbench.tasks.paired import paired_bootstrap, paired_test
from slimbench.tasks.scorers import PERPLEXITY_METRICS
from slimbench.tasks.sequential import CRITERIA, look_sizes, screen, screen_look

PPL = ("perplexity", "perplexity", {}, False)  # kind, metric, options, higher_is_better


def _texts(n: int, seed: int = 0) -> list[dict]:
    """Perplexity records as ``*.examples.jsonl`` holds them."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(30, 61, n)
    nll = tokens * rng.uniform(1.8, 2.4, n)
    return [{"task": "wiki", "id": f"t{i}", "nll_nats": float(x), "tokens": int(t),
             "bytes": int(4 * t)} for i, (x, t) in enumerate(zip(nll, tokens, strict=True))]


def _shifted(base: list[dict], ratio: float, sd: float, seed: int) -> list[dict]:
    """The baseline's texts with a true perplexity ratio ``ratio`` (a per-token NLL shift of
    log(ratio)) plus zero-mean noise of sd ``sd`` sqrt(tokens) nats per text."""
    rng = np.random.default_rng(seed)
    return [dict(e, nll_nats=float(max(0.0, e["nll_nats"] + e["tokens"] * math.log(ratio)
                                       + rng.normal(0, sd * math.sqrt(e["tokens"])))))
            for e in base]


def _choices(n: int, right: int, seed: int = 0) -> list[dict]:
    """Multiple-choice records, right on the first ``right`` of ``n``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ll = rng.normal(size=4).tolist()
        ref = int(rng.integers(4))
        ll[ref if i < right else (ref + 1) % 4] = 10.0
        out.append({"task": "mc", "id": i, "reference": ref, "choice_chars": [5, 5, 5, 5],
                    "loglikelihoods": ll})
    return out


# --- the schedule ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, sizes", [
    ((200,), [16, 37, 86, 200]),
    ((64,), [16, 25, 40, 64]),
    ((1000, 16, 6), [16, 37, 84, 191, 437, 1000]),
    ((20, 16, 4), [16, 17, 19, 20]),
    ((17,), [16, 17]),  # deduplicated
    ((16,), [16]),
    ((5,), [5]),  # fewer than the first look: one look of everything
    ((200, 16, 1), [200]),
])
def test_look_sizes_are_geometric_increasing_and_end_at_the_total(args, sizes):
    assert look_sizes(*args) == sizes


@pytest.mark.parametrize("args", [(0,), (10, 0), (10, 4, 0), (10.5,), (True,)])
def test_look_sizes_refuse_what_is_not_a_count(args):
    with pytest.raises(UsageError, match="must be a whole number"):
        look_sizes(*args)


# --- decisions --------------------------------------------------------------------------------
def test_a_broken_candidate_fails_at_the_first_look():
    base = _texts(200)
    broken = [dict(e, nll_nats=e["nll_nats"] * 1.3) for e in base]  # NLL +30%
    sizes = look_sizes(200)
    looks = screen(base, broken, *PPL, "non_inferior", 0.02, "relative", sizes)
    assert len(looks) == 1
    first = looks[0]
    assert (first.status, first.n, first.look, first.looks) == ("fail", 16, 1, 4)
    assert first.alpha_per_look == pytest.approx(0.0125)
    assert first.degradation > 0.5 and first.ci[0] > first.allowance == pytest.approx(0.02)
    assert "look 1/4 on 16 examples: fail" in first.why and "98.75% CI" in first.why
    # the same, screened as no significant loss: a loss beyond the allowance is demonstrated
    looks = screen(base, broken, *PPL, "no_significant_loss", 0.02, "relative", sizes)
    assert [(lk.status, lk.n) for lk in looks] == [("fail", 16)]
    # and one look directly, on the first 16 only
    lk = screen_look(base[:16], broken[:16], *PPL, "non_inferior", 0.02, "relative", 1, 4)
    assert lk.status == "fail" and lk.test.n == 16 and lk.test.test == "non_inferiority"


def test_an_identical_candidate_passes_early():
    base = _texts(200)
    for criterion in CRITERIA:
        looks = screen(base, [dict(e) for e in base], *PPL, criterion, 0.02, "relative",
                       look_sizes(200))
        assert [(lk.status, lk.n) for lk in looks] == [("pass", 16)], criterion
        assert looks[0].degradation == 0.0 and looks[0].ci == (0.0, 0.0)


def test_in_between_candidates_continue_then_decide_at_the_last_look():
    base, sizes = _texts(200), look_sizes(200)
    # true +1% (allowance 2%): undecided at 16, 37 and 86 examples, passes on all 200
    near = screen(base, _shifted(base, 1.01, 0.3, 2), *PPL, "non_inferior", 0.02, "relative",
                  sizes)
    assert [(lk.status, lk.n) for lk in near] == [
        ("continue", 16), ("continue", 37), ("continue", 86), ("pass", 200)]
    assert near[-1].ci[1] <= 0.02 < near[-2].ci[1]
    assert near[-1].test.status == "pass"  # the last look is the plain test at its level
    # true +2%, exactly at the allowance: undecided, then fails non-inferiority at the end
    at = screen(base, _shifted(base, 1.02, 0.2, 0), *PPL, "non_inferior", 0.02, "relative",
                sizes)
    assert [lk.status for lk in at] == ["continue"] * 3 + ["fail"]
    assert at[-1].ci[0] < 0.02 < at[-1].ci[1] and at[-1].degradation == pytest.approx(0.0202,
                                                                                      abs=2e-4)
    # the same candidate under no_significant_loss: never an early fail (the loss beyond the
    # allowance is not demonstrated), at the end the significance rule: d > A and lo > 0
    nsl = screen(base, _shifted(base, 1.02, 0.2, 0), *PPL, "no_significant_loss", 0.02,
                 "relative", sizes)
    assert [lk.status for lk in nsl] == ["continue"] * 3 + ["fail"]
    assert nsl[-1].degradation > 0.02 and nsl[-1].ci[0] > 0 and nsl[-1].ci[0] < 0.02
    # with a larger allowance the same change is no significant loss
    assert screen(base, _shifted(base, 1.02, 0.2, 0), *PPL, "no_significant_loss", 0.021,
                  "relative", sizes)[-1].status == "pass"


def test_no_significant_loss_passes_a_small_noisy_loss_and_fails_a_large_one_early():
    # multiple choice, accuracy in points: the baseline right on 60 of 80, the candidates on
    # 57 (3 answers lost: 3.75 points) and 50 (12.5 points); allowance 2 points, 2 looks
    base = _choices(80, 60)

    def look(right, k, criterion="no_significant_loss"):
        return screen_look(base, _choices(80, right), "multiple_choice", "acc", None, True,
                           criterion, 2.0, "absolute", k, 2)
    small = look(57, 1)
    assert small.degradation == pytest.approx(3.75) and small.allowance == 2.0
    assert small.ci == (0.0, 10.0) and small.status == "continue"  # neither end decides
    last = look(57, 2)  # d > A, but lo = 0: not significant, so it passes at the end
    assert last.status == "pass" and "not significant" in last.test.why
    assert "degradation +3.75, 97.5% CI [+0, +10], allowance +2" in last.why
    # non-inferiority on the same answers asks the candidate for proof: it fails
    assert look(57, 2, "non_inferior").status == "fail"
    # 7.5 more points lost: beyond the allowance with the whole interval, fails at look 1
    large = look(50, 1)
    assert large.status == "fail" and large.ci[0] > 2.0
    assert "a loss beyond the allowance demonstrated" in large.why


def test_generation_records_screen_on_their_metric():
    refs = [f"answer number {i}" for i in range(40)]
    base = [{"task": "qa", "id": i, "prediction": r, "reference": r}
            for i, r in enumerate(refs)]
    cand = [dict(e, prediction="wrong" if i % 2 else e["reference"])
            for i, e in enumerate(base)]
    lk = screen_look(base, cand, "generation", "exact_match", None, True, "non_inferior",
                     0.02, "relative", 1, 3)
    assert lk.status == "fail" and lk.degradation == pytest.approx(0.5)
    same = screen_look(base, base, "generation", "exact_match", None, True, "non_inferior",
                       0.02, "relative", 1, 3)
    assert same.status == "pass"


def test_each_look_s_interval_is_at_one_minus_alpha_over_looks():
    base = _texts(60)
    cand = _shifted(base, 1.01, 0.3, 1)
    lk = screen_look(base, cand, *PPL, "non_inferior", 0.02, "relative", 1, 4, alpha=0.05,
                     resamples=2000)
    at95 = paired_test(base, cand, *PPL, "non_inferiority", "relative", 0.02, resamples=2000)
    assert lk.alpha_per_look == pytest.approx(0.0125)
    wide, narrow = lk.test.degradation_ci95, at95.degradation_ci95
    assert wide[0] < narrow[0] and narrow[1] < wide[1]
    assert lk.test.degradation == at95.degradation and lk.test.se == at95.se
    assert "98.75% CI" in lk.test.why and "95% CI" in at95.why
    # the interval is the percentile interval of the same paired resamples at that level
    rows = np.array([[e["nll_nats"], e["tokens"], e["bytes"]] for e in base])
    crows = np.array([[e["nll_nats"], e["tokens"], e["bytes"]] for e in cand])
    agg = PERPLEXITY_METRICS["perplexity"].aggregate
    boot = paired_bootstrap(rows, crows, agg, 2000, 0, level=0.9875)
    assert lk.test.ci95 == pytest.approx(boot.ci95)
    assert lk.ci == pytest.approx(tuple(x / boot.baseline for x in lk.test.degradation_ci95))
    # the default level is unchanged
    assert paired_bootstrap(rows, crows, agg, 2000, 0) == paired_bootstrap(rows, crows, agg,
                                                                           2000, 0, 0.95)


@pytest.mark.parametrize("change, message", [
    (dict(criterion="better"), "unknown screening criterion 'better' "
                               "(one of non_inferior, no_significant_loss)"),
    (dict(mode="percent"), "unknown allowance mode 'percent'"),
    (dict(look=5), "look 5 is beyond the 4 planned"),
    (dict(look=0), "look must be a whole number >= 1"),
    (dict(alpha=1.5), "screening alpha must be a number between 0 and 1"),
    (dict(allowance=-1.0), "allowed change must be a finite number >= 0"),
])
def test_bad_arguments_are_one_line(change, message):
    base = _texts(20)
    args = dict(criterion="non_inferior", allowance=0.02, mode="relative", look=1,
                looks=4) | change
    with pytest.raises(UsageError) as info:
        screen_look(base, base, *PPL, **args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_bad_level_is_one_line():
    base = _texts(20)
    with pytest.raises(UsageError, match="confidence level must be a number between 0 and 1"):
        paired_test(base, base, *PPL, "significance", "relative", 0.02, level=95)


# --- the error rate at the allowance, by simulation --------------------------------------------
def _upper(n: int, p: float, q: float = 0.999) -> int:
    """The q-quantile of Binomial(n, p)."""
    total = 0.0
    for k in range(n + 1):
        total += comb(n, k) * p ** k * (1 - p) ** (n - k)
        if total >= q:
            return k
    return n


def test_stopping_at_any_look_keeps_the_error_rate_at_the_allowance():
    """200 candidates whose true degradation is exactly the allowance (+2% perplexity), each
    on fresh texts, screened non_inferior over 4 looks of 64 examples: a pass is a wrong
    decision. Spending alpha over the looks keeps wrong passes near alpha / 2 (the bound is
    alpha / 2; the bootstrap's percentile interval is a little narrow at n = 16); looking four
    times at 95% each does not."""
    sizes, seeds, alpha = look_sizes(64), 200, 0.05
    assert sizes == [16, 25, 40, 64]
    spent = naive = 0
    stopped_early = 0
    for s in range(seeds):
        base = _texts(64, seed=1000 + s)
        cand = _shifted(base, 1.02, 0.3, s)
        looks = screen(base, cand, *PPL, "non_inferior", 0.02, "relative", sizes, alpha=alpha,
                       resamples=200, seed=s)
        spent += looks[-1].status == "pass"
        stopped_early += len(looks) < len(sizes)
        # alpha / looks = 0.05 per look: the 95% interval at every look, nothing spent
        naive += screen(base, cand, *PPL, "non_inferior", 0.02, "relative", sizes,
                        alpha=alpha * len(sizes), resamples=200, seed=s)[-1].status == "pass"
    assert spent <= _upper(seeds, alpha)  # 7 of 200 here; the bound is 20
    assert spent <= 12  # ~alpha / 2 = 5 expected; 12 is its 99.7% binomial quantile
    assert naive >= spent + 6  # 18 of 200 here: unspent looks pass far more often
    assert stopped_early >= 5  # some were decided (wrongly or not) before the last look

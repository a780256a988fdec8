"""The numbers of a paired comparison: the statistics, the stopping rule, the trial plan and
the order of each pair; plain functions, testable without processes (``paired.py`` runs
the processes)."""

from __future__ import annotations

import math
import random
import statistics

MIN_PAIRS = 10  # below this an order-statistic interval is too coarse to mean anything
MAX_UNITS_PER_TRIAL = 100_000


def median_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Median and a distribution-free interval of it from order statistics.

    Why order statistics rather than a bootstrap: the number of values below the true median
    is Binomial(n, 1/2) for any continuous distribution, so [x_(k), x_(n-k+1)] covers it with
    a probability known exactly (>= ``confidence``), with no resampling and no seed. The
    bootstrap of a median is known to be ragged at the small n this starts with, and it is
    computed after every pair. The interval of a ratio transforms exactly into the interval
    of its inverse (the speedup) too.

    Returns:
        (median, lo, hi); for fewer than 6 values no pair of order statistics reaches 95%,
        and (min, max) is returned.
    """
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    n = len(s)
    # largest k with P(B <= k - 1) <= alpha / 2, B ~ Binomial(n, 1/2), in exact integers
    alpha_half = (1 - confidence) / 2
    total, cdf, k = 2 ** n, 0, 0
    while True:
        cdf += math.comb(n, k)
        if cdf / total > alpha_half:
            break
        k += 1
    k = max(k, 1)  # 1-indexed order statistic; k = 1 is (min, max)
    return statistics.median(s), s[k - 1], s[n - k]


def ratio_summary(base: list[float], cand: list[float]) -> dict:
    """``{"ratio", "ci95", "baseline", "candidate"}`` of paired values: the median of the
    per-pair ratios candidate / baseline, its interval, and each side's median."""
    ratios = [c / b for b, c in zip(base, cand, strict=True)]
    ratio, lo, hi = median_ci(ratios)
    return {"ratio": ratio, "ci95": [lo, hi], "baseline": statistics.median(base),
            "candidate": statistics.median(cand)}


def time_ratio(r: dict) -> tuple[float, tuple[float, float]]:
    """A metric's ``ratio_summary`` (with its ``higher_is_better``) as candidate time /
    baseline time and its interval: a rate's ratio (tokens/s) is inverted."""
    ratio, (lo, hi) = r["ratio"], r["ci95"]
    return (1 / ratio, (1 / hi, 1 / lo)) if r.get("higher_is_better") else (ratio, (lo, hi))


def half_width(ratio: float, ci95) -> float:
    """The interval's larger distance from the estimate, relative to it."""
    return max(ratio - ci95[0], ci95[1] - ratio) / ratio


def should_stop(ratios: list[float], elapsed: float, config,
                pair_seconds: float = 0.0) -> bool:
    """The stopping rule for the ``ratios`` so far after ``elapsed`` seconds of pairs under
    ``config`` (a ``PairedConfig``): at least ``MIN_PAIRS`` pairs, and then ``max_seconds``
    reached (or would be, ``pair_seconds`` from now, by the end of the next pair), or
    ``min_seconds`` reached with the interval within ``±precision``. Stopping on the
    interval's width (not on whether it excludes 1) does not bias which side it lands on."""
    if len(ratios) < MIN_PAIRS:
        return False
    if elapsed + pair_seconds >= config.max_seconds:
        return True
    if elapsed < config.min_seconds:
        return False
    ratio, lo, hi = median_ci(ratios)
    return half_width(ratio, (lo, hi)) <= config.precision


def trial_plan(config, calibration: dict) -> dict:
    """What one trial of each side runs, so that it lasts about ``trial_seconds``, given
    ``config`` (a ``PairedConfig``) and each side's warm-up figures (``unit_ms``, and
    ``step_ms`` for decode): ``{"units": K}``, K >= 1 whole units per side (a trial's value
    is a mean per unit); or, for decode units much longer than a trial, ``{"steps": c}`` for
    both sides: c decode steps that continue a unit (c divides new_tokens), the two sides in
    lockstep so that each pair compares the same steps.

    Why steps: a gpt2 decode unit is ~2 s (a 0.5 s prefill and 32 steps at 1 thread); pairs
    of whole units are 4 s apart, and a shared host's speed moves within that. In an A/A
    simulation on 2 shared cores, 8-step trials gave a 1.7x narrower interval than whole
    units in the same 45 s (4x the pairs, closer in time, one prefill per 4 trials).
    """
    t = config.trial_seconds
    unit_s = {role: c["unit_ms"] / 1e3 for role, c in calibration.items()}
    if config.scenario == "decode" and min(unit_s.values()) > 2 * t:
        step_s = statistics.fmean(c["step_ms"] for c in calibration.values()) / 1e3
        n = config.new_tokens
        c = min((d for d in range(1, n + 1) if n % d == 0),
                key=lambda d: abs(math.log(d * step_s / t)))
        return {role: {"steps": c} for role in calibration}
    return {role: {"units": max(1, min(MAX_UNITS_PER_TRIAL, round(t / u)))}
            for role, u in unit_s.items()}


def pair_orders(rng: random.Random):
    """Whether the baseline runs first, for each pair: random, seeded."""
    while True:
        yield rng.random() < 0.5

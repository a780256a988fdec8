"""Percentile-bootstrap 95% intervals over examples (or texts, for perplexity).

Resampling is over rows of per-example statistics, and the metric's own aggregate is
recomputed on each resample, so a corpus metric's interval is a corpus metric's interval.
The seed and resample count are part of the result: the interval is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RESAMPLES = 1000
SEED = 0


def bootstrap_ci(rows: np.ndarray, aggregate: Callable[[np.ndarray], float],
                 resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Point estimate and percentile 95% interval of ``aggregate`` over resampled rows.

    Args:
        rows: (n, k) per-example statistics.
        aggregate: rows -> metric value (the same function as the point estimate).
        resamples: bootstrap resamples (0: no interval).
        seed: numpy generator seed.

    Returns:
        ``{"value", "ci95": [lo, hi] or None, "resamples", "seed"}``.
    """
    rows = np.asarray(rows)
    value = float(aggregate(rows))
    if resamples <= 0 or len(rows) == 0:
        return {"value": value, "ci95": None, "resamples": 0, "seed": seed}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), size=(resamples, len(rows)))  # (R, n)
    samples = np.array([aggregate(rows[i]) for i in idx])
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return {"value": value, "ci95": [float(lo), float(hi)], "resamples": resamples,
            "seed": seed}

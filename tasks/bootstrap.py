"""Percentile-bootstrap 95% intervals over examples (or texts, for perplexity).

Resampling is over rows of per-example statistics, and the metric's own aggregate is
recomputed on each resample, so a corpus metric's interval is a corpus metric's interval.
The seed and resample count are part of the result: the interval is reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from slimbench.schema import Interval, Typed

RESAMPLES = 1000
SEED = 0


@dataclasses.dataclass(frozen=True)
class Estimate(Typed):
    """A point estimate and its percentile-bootstrap interval (``to_dict()``: the first fields
    of a task's per-metric mapping, the results schema's ``Score``).

    Attributes:
        value: the aggregate over every row.
        ci95: percentile 95% interval over the resamples, or null (no resamples).
        resamples: bootstrap resamples behind the interval (0: none).
        seed: the numpy generator's seed.
    """

    value: float
    ci95: Interval | None
    resamples: int
    seed: int


def bootstrap_ci(rows: np.ndarray, aggregate: Callable[[np.ndarray], float],
                 resamples: int = RESAMPLES, seed: int = SEED) -> Estimate:
    """Point estimate and percentile 95% interval of ``aggregate`` over resampled rows.

    Args:
        rows: (n, k) per-example statistics.
        aggregate: rows -> metric value (the same function as the point estimate).
        resamples: bootstrap resamples (0: no interval).
        seed: numpy generator seed.

    Returns:
        The estimate; its ``ci95`` is None (and ``resamples`` 0) without resamples or rows.
    """
    rows = np.asarray(rows)
    value = float(aggregate(rows))
    if resamples <= 0 or len(rows) == 0:
        return Estimate(value, None, 0, seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), size=(resamples, len(rows)))  # (R, n)
    samples = np.array([aggregate(rows[i]) for i in idx])
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return Estimate(value, (float(lo), float(hi)), resamples, seed)

"""Wall-clock timing: warm up, then repeat until a minimum count *and* a minimum duration."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

from slimbench.schema import Measurement


def time_callable(fn: Callable[[], object], warmup: int = 3, min_repeats: int = 10,
                  min_seconds: float = 1.0, sync: Callable[[], None] | None = None,
                  max_repeats: int = 10_000) -> list[float]:
    """Seconds per call of ``fn``; ``sync`` (e.g. CUDA synchronize) runs inside the timed region
    so asynchronous device work is counted."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_repeats and (
            len(samples) < min_repeats or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - t0)
    return samples


def percentile(sorted_samples: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of pre-sorted samples."""
    if not sorted_samples:
        raise ValueError("no samples")
    pos = (len(sorted_samples) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


CV_WARNING = 0.10  # pyperf warns above 10%: such a figure is too noisy to gate on


def bootstrap_median_ci(samples: list[float], resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the median (the tasks' bootstrap, seeded)."""
    import numpy as np

    from slimbench.tasks.bootstrap import bootstrap_ci

    if len(samples) < 2:
        return float(samples[0]), float(samples[0])
    lo, hi = bootstrap_ci(np.asarray(samples), np.median, resamples, seed).ci95
    return lo, hi


@dataclasses.dataclass(frozen=True)
class SampleStats:
    """The statistics of repeated samples (in the unit ``sample_stats`` scaled them to).

    Attributes:
        n: number of samples.
        median: their median.
        mean: their mean.
        p90: 90th percentile (linear interpolation).
        p99: 99th percentile.
        stdev: sample standard deviation (0 for one sample).
        cv: coefficient of variation, stdev / mean.
        median_ci95: percentile-bootstrap 95% interval of the median (seeded).
        min: smallest sample.
        max: largest sample.
        warning: why the figure may not be trusted (CV above ``CV_WARNING``), or None.
    """

    n: int
    median: float
    mean: float
    p90: float
    p99: float
    stdev: float
    cv: float
    median_ci95: tuple[float, float]
    min: float
    max: float
    warning: str | None = None


def sample_stats(samples: list[float], scale: float = 1e3) -> SampleStats:
    """Median, mean, p90, p99, stdev, CV and the median's 95% bootstrap interval of
    ``samples`` (times ``scale``: ms by default), with a warning when CV is high."""
    s = sorted(x * scale for x in samples)
    mean = statistics.fmean(s)
    stdev = statistics.stdev(s) if len(s) > 1 else 0.0
    cv = stdev / mean if mean else 0.0
    warning = None
    if cv > CV_WARNING:
        warning = (f"high variation: CV {cv:.1%} > {CV_WARNING:.0%}; the machine was "
                   "busy or the run too short to trust this figure")
    return SampleStats(n=len(s), median=statistics.median(s), mean=mean,
                       p90=percentile(s, 90), p99=percentile(s, 99), stdev=stdev, cv=cv,
                       median_ci95=bootstrap_median_ci(s), min=s[0], max=s[-1],
                       warning=warning)


def measurement(name: str, unit: str, samples: list[float], scale: float = 1e3,
                higher_is_better: bool = False) -> Measurement:
    """``sample_stats(samples, scale)`` as the results schema's ``Measurement`` called ``name``."""
    s = sample_stats(samples, scale)
    return Measurement(name=name, unit=unit, higher_is_better=higher_is_better,
                       median=s.median, ci95=tuple(s.median_ci95), n=s.n, cv=s.cv,
                       mean=s.mean, p90=s.p90, p99=s.p99, stdev=s.stdev, min=s.min,
                       max=s.max, warnings=[s.warning] if s.warning else [])

"""The numbers of a paired comparison: the statistics, the stopping rule, the trial plan and
the order of each pair, and the records they make; plain functions, testable without
processes (``paired.py`` runs the processes)."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics

from slimbench.bench.measure.scenarios import SCENARIOS as LATENCY
from slimbench.errors import UsageError

MIN_PAIRS = 10  # below this an order-statistic interval is too coarse to mean anything
MAX_UNITS_PER_TRIAL = 100_000


@dataclasses.dataclass(frozen=True)
class PairedConfig:
    """How to compare.

    Args:
        scenario: prefill, decode or generate.
        length: prefill: prompt tokens; decode: context tokens; generate: prompt tokens.
        new_tokens: decode: timed single-token steps per unit; generate: tokens generated.
        device: cpu, cuda or cuda:N.
        dtype: float32, float16 or bfloat16 (None: as stored).
        threads: torch / ORT intra-op threads of each worker (None: all cores).
        min_seconds: measure pairs at least this long (wall time).
        max_seconds: and at most this long (at least ``MIN_PAIRS`` pairs always).
        precision: after ``min_seconds``, stop once the 95% interval of the ratio is within
            ``±precision`` of it (relative).
        min_effect: the smallest relative change called faster or slower.
        trial_seconds: target length of one trial (its unit count is calibrated in warm-up).
        seed: seed of the random order of each pair.
    """

    scenario: str = "decode"
    length: int = 128
    new_tokens: int = 32
    device: str = "cpu"
    dtype: str | None = None
    threads: int | None = None
    min_seconds: float = 10.0
    max_seconds: float = 60.0
    precision: float = 0.02
    min_effect: float = 0.05
    trial_seconds: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        LATENCY.get(self.scenario)  # unknown: "did you mean ...?"
        for name in ("length", "new_tokens", "seed") + (("threads",) if self.threads else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{name} must be an integer, got {value!r}")
        for name in ("min_seconds", "max_seconds", "precision", "min_effect", "trial_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                    value):
                raise UsageError(f"{name} must be a finite number, got {value!r}")
        if self.length < 1:
            raise UsageError(f"length must be >= 1, got {self.length}")
        least = 2 if self.scenario == "generate" else 1  # ttft and tpot need two tokens
        if self.new_tokens < least:
            raise UsageError(f"new_tokens must be >= {least} for {self.scenario}, got "
                             f"{self.new_tokens}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        if self.min_seconds < 0 or self.max_seconds <= 0 or self.min_seconds > self.max_seconds:
            raise UsageError(f"need 0 <= min_seconds <= max_seconds and max_seconds > 0, got "
                             f"{self.min_seconds:g} and {self.max_seconds:g}")
        if not 0 < self.precision < 1:
            raise UsageError(f"precision must be in (0, 1), got {self.precision:g}")
        if not 0 <= self.min_effect < 1:
            raise UsageError(f"min_effect must be in [0, 1), got {self.min_effect:g}")
        if not 0.001 <= self.trial_seconds <= 10:
            raise UsageError(f"trial_seconds must be in [0.001, 10], got {self.trial_seconds:g}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MetricRatio:
    """One metric of a comparison, over its pairs.

    Attributes:
        ratio: median of the per-pair ratios candidate / baseline.
        ci95: its distribution-free 95% interval (``median_ci``).
        baseline: median of the baseline's values.
        candidate: median of the candidate's values.
        unit: the values' unit (ms, tok/s).
        higher_is_better: the metric's direction (a rate: its ratio is inverted to compare
            times, ``time_ratio``).
    """

    ratio: float
    ci95: tuple[float, float]
    baseline: float
    candidate: float
    unit: str = "ms"
    higher_is_better: bool = False

    def to_dict(self) -> dict:
        """Plain JSON values (``compare --json``'s ``ratios``)."""
        return dataclasses.asdict(self) | {"ci95": list(self.ci95)}

    @classmethod
    def from_dict(cls, data: dict) -> MetricRatio:
        """From ``to_dict()``'s form (a comparison read back from JSON)."""
        lo, hi = data["ci95"]
        return cls(ratio=data["ratio"], ci95=(lo, hi), baseline=data["baseline"],
                   candidate=data["candidate"], unit=data.get("unit", "ms"),
                   higher_is_better=bool(data.get("higher_is_better", False)))


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What one side's warm-up found, and the trials sized from it.

    Attributes:
        unit_ms: wall milliseconds of the fastest warm unit (decode: with its prefill).
        warmup_units: units run in warm-up.
        step_ms: decode only: the fastest warm unit's milliseconds per step.
        units_per_trial: whole units per trial (when trials are of units).
        steps_per_trial: decode steps per trial (when trials are of steps).
    """

    unit_ms: float
    warmup_units: int
    step_ms: float | None = None
    units_per_trial: int | None = None
    steps_per_trial: int | None = None

    def to_dict(self) -> dict:
        """Plain JSON values; fields that do not apply are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """What one trial of a side runs (``trial_plan``): ``units`` whole units, or (decode)
    ``steps`` steps that continue a unit; ``filler``: a trial whose figures are not used.

    Attributes:
        units: whole units per trial, or None.
        steps: decode steps per trial, or None.
        filler: True for a filler trial (see ``paired.ALTERNATE``).
    """

    units: int | None = None
    steps: int | None = None
    filler: bool = False


@dataclasses.dataclass(frozen=True)
class OrderRatio:
    """The pairs in which one side ran first.

    Attributes:
        pairs: how many.
        ratio: the median ratio of the primary metric over them (None for none).
    """

    pairs: int
    ratio: float | None


@dataclasses.dataclass(frozen=True)
class ByOrder:
    """The primary metric's median ratio by which side ran first: far apart, the order
    mattered (a warm thread pool, a cache) more than pairing cancels.

    Attributes:
        baseline_first: the pairs in which the baseline ran first.
        candidate_first: the pairs in which the candidate ran first.
    """

    baseline_first: OrderRatio
    candidate_first: OrderRatio


@dataclasses.dataclass(frozen=True)
class Host:
    """Other work on the machine during a comparison.

    Attributes:
        load_average_1m: the 1-minute load average before the workers started.
        other_cores: the cores' worth of CPU that processes other than the comparison's used
            during the pairs (None without /proc).
    """

    load_average_1m: float | None
    other_cores: float | None


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


def ratio_summary(base: list[float], cand: list[float], unit: str = "ms",
                  higher_is_better: bool = False) -> MetricRatio:
    """The median of the per-pair ratios candidate / baseline of paired values, its
    interval, and each side's median."""
    ratios = [c / b for b, c in zip(base, cand, strict=True)]
    ratio, lo, hi = median_ci(ratios)
    return MetricRatio(ratio=ratio, ci95=(lo, hi), baseline=statistics.median(base),
                       candidate=statistics.median(cand), unit=unit,
                       higher_is_better=higher_is_better)


def time_ratio(r: MetricRatio | dict) -> tuple[float, tuple[float, float]]:
    """A metric's ratio as candidate time / baseline time and its interval: a rate's ratio
    (tokens/s) is inverted. ``r``: a ``MetricRatio``, or its ``to_dict()`` form as a
    comparison's JSON holds it."""
    if isinstance(r, dict):
        r = MetricRatio.from_dict(r)
    ratio, (lo, hi) = r.ratio, r.ci95
    return (1 / ratio, (1 / hi, 1 / lo)) if r.higher_is_better else (ratio, (lo, hi))


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


def trial_plan(config, calibration: dict[str, Calibration]) -> dict[str, TrialPlan]:
    """What one trial of each side (by role) runs, so that it lasts about ``trial_seconds``,
    given ``config`` (a ``PairedConfig``) and each side's warm-up figures (``unit_ms``, and
    ``step_ms`` for decode): K >= 1 whole ``units`` per side (a trial's value is a mean per
    unit); or, for decode units much longer than a trial, c ``steps`` for both sides: c
    decode steps that continue a unit (c divides new_tokens), the two sides in lockstep so
    that each pair compares the same steps.

    Why steps: a gpt2 decode unit is ~2 s (a 0.5 s prefill and 32 steps at 1 thread); pairs
    of whole units are 4 s apart, and a shared host's speed moves within that. In an A/A
    simulation on 2 shared cores, 8-step trials gave a 1.7x narrower interval than whole
    units in the same 45 s (4x the pairs, closer in time, one prefill per 4 trials).
    """
    t = config.trial_seconds
    unit_s = {role: c.unit_ms / 1e3 for role, c in calibration.items()}
    if config.scenario == "decode" and min(unit_s.values()) > 2 * t:
        step_s = statistics.fmean(c.step_ms for c in calibration.values()) / 1e3
        n = config.new_tokens
        c = min((d for d in range(1, n + 1) if n % d == 0),
                key=lambda d: abs(math.log(d * step_s / t)))
        return {role: TrialPlan(steps=c) for role in calibration}
    return {role: TrialPlan(units=max(1, min(MAX_UNITS_PER_TRIAL, round(t / u))))
            for role, u in unit_s.items()}


def pair_orders(rng: random.Random):
    """Whether the baseline runs first, for each pair: random, seeded."""
    while True:
        yield rng.random() < 0.5

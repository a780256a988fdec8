"""Verdicts: one ``Check`` per metric the gate compares or per acceptance criterion a suite
judges, and the paired tests behind them.

The gate (``reports/gate.py``: a candidate run against a baseline run) and a suite's
acceptance criteria (``bench/orchestrate/acceptance.py``: each variant against its baseline
within one run) hand the same type to their readers (the Markdown tables, ``acceptance.json``,
the HTML report, ``--remeasure``), so a verdict reads one way whichever made it. The fields
either side has no use for stay None and are not written.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from slimbench.schema.codec import Typed, encode
from slimbench.schema.measurements import Interval

Status = Literal["pass", "fail", "info", "skipped"]


@dataclasses.dataclass(frozen=True)
class PairedTest(Typed):
    """A paired quality test (``tasks/paired.py``): both sides scored on the same examples,
    resampled together, and the decision on the interval of the change.

    Attributes:
        metric: the metric tested (its name within the task, e.g. bleu).
        baseline: the metric over the baseline's examples.
        candidate: the metric over the candidate's examples.
        delta: candidate - baseline.
        ci95: percentile 95% interval of the delta over paired resamples.
        se: standard error of the delta over the resamples.
        n: examples paired.
        resamples: bootstrap resamples.
        seed: the bootstrap's seed.
        status: pass or fail.
        why: the decision in words, starting with the metric.
        test: significance (fail on a demonstrated loss beyond the allowance) or
            non_inferiority (pass only when the interval's bad end is within it).
        allowance: the allowed degradation, in metric units.
        degradation: the change in the bad direction (> 0: worse).
        degradation_ci95: the interval of the degradation.
        detectable: the smallest degradation the test could detect with this n.
        detectable_relative: detectable / |baseline|, or null for a baseline of 0.
    """

    metric: str
    baseline: float
    candidate: float
    delta: float
    ci95: Interval
    se: float
    n: int
    resamples: int
    seed: int
    status: Literal["pass", "fail"]
    why: str
    test: Literal["significance", "non_inferiority"]
    allowance: float
    degradation: float
    degradation_ci95: Interval
    detectable: float
    detectable_relative: float | None


@dataclasses.dataclass(frozen=True)
class PairedLatency(Typed):
    """A latency check decided on a paired, interleaved re-measurement of both artifacts
    (``slimbench gate --remeasure``).

    Attributes:
        ratio: candidate time / baseline time (a rate's ratio inverted).
        ci95: the ratio's 95% interval.
        pairs: interleaved pairs measured.
        seconds: time the pairs took.
        scenario: prefill, decode or generate.
    """

    ratio: float
    ci95: Interval
    pairs: int
    seconds: float
    scenario: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check(Typed):
    """One verdict: a metric of the gate or a suite's acceptance criterion.

    Attributes:
        variant: the variant judged (the candidate's).
        baseline: acceptance: the baseline variant it is judged against; null in the gate
            (the same variant of the baseline run).
        device: cpu, cuda or cuda:N (null in the gate for rows that record none).
        metric: e.g. decode_ms_per_token@128, perplexity.perplexity, bytes_on_disk.
        criterion: acceptance: non_inferior, no_significant_loss, speedup_at_least,
            slowdown_at_most or ratio_at_most.
        threshold: acceptance: the criterion's figure (as the suite gives it).
        value: acceptance: what the criterion judges (quality: the paired change; latency:
            the speedup or the time ratio; size: candidate / baseline); null until measured.
        ci95: acceptance: the value's 95% interval, or null.
        comparison: acceptance latency: which A/B of ``acceptance.json`` it was read from
            (variant, device, scenario).
        status: pass, fail, info (gate: reported, not gated) or skipped (acceptance: a cell
            was skipped).
        why: the reason in words ("" for a plain pass).
        paired: the paired quality test that decided it, where both sides saved their
            per-example outputs.
        warnings: acceptance latency: the A/B's warnings.
        baseline_value: the baseline's figure (gate: the median over the baseline runs).
        candidate_value: the candidate's figure (gate: null where the candidate lacks it).
        shown: acceptance: the value and its interval as text.
        backend: gate: torch or onnxruntime.
        cell: gate: the baseline's cell id.
        candidate_cell: gate: the candidate's cell id (null where it lacks the metric).
        kind: gate: latency, memory, size or quality (the row's kind).
        baseline_range: gate: lowest and highest value over the baseline runs.
        baseline_runs: gate: how many baseline runs have the metric.
        higher_is_better: gate: the metric's direction.
        change: gate: (candidate - baseline) / |baseline|; null for a baseline of 0.
        mode: gate: the allowance's mode, relative or absolute.
        allowed: gate: the allowed change in the bad direction.
        paired_latency: gate: the paired re-measurement that decided a latency check.
    """

    variant: str
    baseline: str | None = None
    device: str | None
    metric: str
    criterion: str | None = None
    threshold: float | None = None
    value: float | None = None
    ci95: Interval | None = None
    comparison: dict[str, str] | None = None
    status: Status
    why: str
    paired: PairedTest | None = None
    warnings: list[str] | None = None
    baseline_value: float | None = None
    candidate_value: float | None = None
    shown: str | None = None
    backend: str | None = None
    cell: str | None = None
    candidate_cell: str | None = None
    kind: Literal["latency", "memory", "size", "quality"] | None = None
    baseline_range: Interval | None = None
    baseline_runs: int | None = None
    higher_is_better: bool | None = None
    change: float | None = None
    mode: Literal["relative", "absolute"] | None = None
    allowed: float | None = None
    paired_latency: PairedLatency | None = None

    # written even when null: an acceptance criterion's figure, null until measured
    _KEEP_NULL = ("value", "ci95")

    def to_dict(self) -> dict:
        """What ``acceptance.json`` holds for a criterion: the fields this check has, in
        field order (an acceptance criterion's value and ci95 even when null)."""
        keep = self._KEEP_NULL if self.criterion is not None else ()
        return {f.name: encode(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None or f.name in keep}

"""The result of a paired comparison (``paired.py``): its typed record, its plain JSON
(``compare --json``) and the lines ``slimbench compare`` prints."""

from __future__ import annotations

import dataclasses

from slimbench.bench.measure.paired_stats import (
    ByOrder,
    Calibration,
    Host,
    MetricRatio,
    PairedConfig,
)
from slimbench.bench.measure.paired_worker import WorkerModel


@dataclasses.dataclass
class PairedResult:
    """One paired comparison; ``to_dict()`` gives plain JSON values (``compare --json``).

    Attributes:
        baseline: the baseline's model spec.
        candidate: the candidate's model spec.
        scenario: prefill, decode or generate.
        metric: the scenario's primary metric, which the verdict is about.
        config: the comparison's configuration.
        pairs: pairs measured (after the burn-in).
        seconds: wall time of the pairs.
        ratios: per metric of the scenario, its ratio over the pairs.
        verdict: faster, slower or no change.
        why: the verdict's reason in one line.
        min_effect: the smallest relative change called faster or slower.
        fingerprints: per side (baseline, candidate), its worker's environment fingerprint.
        warnings: what makes the verdict doubtful.
        trials: per pair, (baseline value, candidate value, baseline ran first) of ``metric``.
        unit: the unit of ``trials``' values.
        models: per side, what its worker loaded.
        calibration: per side, its warm-up figures and trial size.
        setup_seconds: loading and warm-up, before the pairs.
        by_order: the median ratio by which side ran first (None before the pairs).
        host: other work on the machine (None where not measured).
    """

    baseline: str
    candidate: str
    scenario: str
    metric: str
    config: PairedConfig
    pairs: int
    seconds: float
    ratios: dict[str, MetricRatio]
    verdict: str
    why: str
    min_effect: float
    fingerprints: dict[str, dict | None]
    warnings: list[str]
    trials: list[tuple[float, float, bool]]
    unit: str = "ms"
    models: dict[str, WorkerModel] = dataclasses.field(default_factory=dict)
    calibration: dict[str, Calibration] = dataclasses.field(default_factory=dict)
    setup_seconds: float = 0.0
    by_order: ByOrder | None = None
    host: Host | None = None

    @property
    def ratio(self) -> float:
        return self.ratios[self.metric].ratio

    @property
    def ci95(self) -> tuple[float, float]:
        lo, hi = self.ratios[self.metric].ci95
        return lo, hi

    @property
    def speedup(self) -> float:
        return 1 / self.ratio

    @property
    def speedup_ci95(self) -> tuple[float, float]:
        lo, hi = self.ci95
        return 1 / hi, 1 / lo

    @property
    def verdict_line(self) -> str:
        return f"verdict: {self.verdict} ({self.why})"

    def to_dict(self) -> dict:
        """Plain JSON values: every field (an unset ``by_order`` or ``host`` as ``{}``), then
        the primary metric's ``ratio``, ``ci95``, ``speedup`` and ``speedup_ci95``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out |= {"config": self.config.to_dict(),
                "ratios": {k: r.to_dict() for k, r in self.ratios.items()},
                "fingerprints": dict(self.fingerprints), "warnings": list(self.warnings),
                "trials": [list(t) for t in self.trials],
                "models": {k: dataclasses.asdict(m) for k, m in self.models.items()},
                "calibration": {k: c.to_dict() for k, c in self.calibration.items()},
                "by_order": dataclasses.asdict(self.by_order) if self.by_order else {},
                "host": dataclasses.asdict(self.host) if self.host else {}}
        return out | {"ratio": self.ratio, "ci95": list(self.ci95), "speedup": self.speedup,
                      "speedup_ci95": list(self.speedup_ci95)}


def format_result(result: PairedResult) -> str:
    """The few lines ``slimbench compare`` prints (without the warnings)."""
    lines = []
    for role in ("baseline", "candidate"):
        m = result.models.get(role)
        what = ", ".join(str(x) for x in (
            m.backend, m.device, m.dtype,
            f"{m.parameters / 1e6:.1f} M params" if m.parameters else None,
            f"{m.threads} threads" if m.threads else None,
            "/".join(m.recipe) if m.recipe else None) if x) if m else ""
        lines.append(f"{role:<10} {getattr(result, role)}  ({what})")
    c = result.config
    what = {"prefill": f"prompt {c.length} tokens",
            "decode": f"context {c.length}, {c.new_tokens} new tokens",
            "generate": f"prompt {c.length}, {c.new_tokens} new tokens"}[result.scenario]
    cal = [result.calibration.get(r) for r in ("baseline", "candidate")]
    trial = (f"trials of {cal[0].steps_per_trial} of {c.new_tokens} decode steps"
             if cal[0] and cal[0].steps_per_trial is not None else
             " / ".join(str(x.units_per_trial if x and x.units_per_trial is not None else "?")
                        for x in cal) + " units per trial")
    lines.append(f"{result.scenario}: {what}; {result.pairs} pairs in {result.seconds:.1f} s "
                 f"({trial})")
    for name, r in result.ratios.items():
        u = r.unit
        lines.append(f"  {name:<20} median {r.baseline:.3f} {u} -> {r.candidate:.3f} {u}, "
                     f"ratio {r.ratio:.3f} [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]")
    lo, hi = result.speedup_ci95
    lines.append(f"speedup {result.speedup:.3f}x [{lo:.3f}, {hi:.3f}]")
    lines.append(result.verdict_line)
    return "\n".join(lines)

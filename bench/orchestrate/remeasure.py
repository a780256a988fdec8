"""``slimbench gate --remeasure``: a candidate run's latency against a baseline run's, measured
again, paired and interleaved, from both runs' artifacts.

Latency figures of two runs made at different times (or on different machines) cannot be
compared on a shared host: the host's state moves them more than most regressions. What the
runs can still tell is *which* artifacts they measured (each cell records its artifact and its
content key). Where both are at hand (the content-addressed cache keeps them), each latency
scenario of each variant is measured once more with ``paired_compare``: baseline artifact vs
candidate artifact, on this machine, now, in alternating trials. The gate's latency checks of
that variant are then decided on the paired ratio (slower beyond the policy's allowance with an
interval that excludes 1 fails), whatever the two runs' own figures said.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from slimbench.errors import SlimbenchError
from slimbench.schema import Check, PairedLatency


def artifact_at_hand(artifact: str | None, content_key: str | None, recipe: list,
                     run_dir: Path) -> str | None:
    """What to load for a cell's artifact, or None where it is not at hand. A recipe-less
    variant's artifact is its model spec (``reference``, ``shape:gpt2``, a folder, a hub id);
    a built artifact is a folder of the run's cache, found where it was (relative to the
    working directory the run was made in) or in the default cache beside the run."""
    if artifact is None:
        return None
    if not recipe:
        return artifact
    path = Path(artifact)
    for where in (path, Path(run_dir).parent / ".artifacts" / path.name,
                  Path(run_dir) / ".artifacts" / path.name):
        # the folder name starts with the content key: the very artifact that was measured
        if where.is_dir() and (not content_key or where.name.startswith(content_key)):
            return str(where)
    return None


def _scenario(metric: str, latency: dict) -> tuple[str, str, int, int] | None:
    """(metric, scenario, length, new_tokens) of a latency row name such as
    ``decode_ms_per_token@128``: a cell and a pair measure the same scenarios by the same
    names; None for what a pair cannot re-measure (batch sweeps)."""
    from slimbench.bench.measure.paired import SCENARIO_OF_METRIC

    name, _, tag = metric.partition("@")
    if name not in SCENARIO_OF_METRIC or not tag.isdigit():
        return None
    return name, SCENARIO_OF_METRIC[name], int(tag), int(latency.get("new_tokens", 32))


@dataclasses.dataclass(frozen=True)
class Remeasure:
    """Where the two runs are and how long each pair of artifacts may be measured."""

    baseline_dir: Path
    candidate_dir: Path
    threads: int | None
    latency: dict
    min_seconds: float = 10.0
    max_seconds: float = 30.0


def remeasure(checks: list[Check], evidence, plan: Remeasure, policy,
              say=print) -> list[Check]:
    """``checks`` with every latency check whose two artifacts are at hand decided on a
    paired re-measurement (one comparison per variant, device and scenario); the others are
    returned as they were, their note saying why they were not re-measured."""
    from slimbench.bench.measure.paired import PairedConfig, paired_compare

    results: dict[tuple, object] = {}
    out = []
    for check in checks:
        spec = _scenario(check.metric, plan.latency) if check.kind == "latency" else None
        if spec is None or check.candidate_value is None:
            out.append(check)
            continue
        paired_metric, scenario, length, new_tokens = spec
        sides = _sides(check, evidence, plan)
        if isinstance(sides, str):
            out.append(_note(check, f"not re-measured: {sides}"))
            continue
        key = (check.variant, check.device, scenario, length)
        if key not in results:
            config = PairedConfig(scenario=scenario, length=length, new_tokens=new_tokens,
                                  device=check.device, threads=plan.threads,
                                  min_seconds=min(plan.min_seconds, plan.max_seconds),
                                  max_seconds=plan.max_seconds)
            say(f"re-measuring {check.variant} ({check.device}) {scenario}@{length}: "
                f"{sides[0]} vs {sides[1]}, paired")
            try:
                results[key] = paired_compare(*sides, config)
            except SlimbenchError as e:
                results[key] = str(e)
        result = results[key]
        if isinstance(result, str):
            out.append(_note(check, f"not re-measured: {result}"))
            continue
        out.append(_decide(check, result, paired_metric, policy))
    return out


def _note(check: Check, note: str) -> Check:
    return dataclasses.replace(check, why=f"{check.why} [{note}]".strip())


def _sides(check: Check, evidence, plan: Remeasure) -> tuple[str, str] | str:
    """The two artifacts to load, or why they are not at hand."""
    found = []
    for ev_map, cell, run_dir, side in (
            (evidence[0], check.cell, plan.baseline_dir, "baseline"),
            (evidence[1], check.candidate_cell, plan.candidate_dir, "candidate")):
        ev = ev_map.get(cell)
        if ev is None or ev.artifact is None:
            return f"the {side} run does not record its artifact"
        where = artifact_at_hand(ev.artifact, ev.content_key, ev.recipe, run_dir)
        if where is None:
            return f"the {side} artifact {ev.artifact} is not at hand"
        found.append(where)
    return found[0], found[1]


def _decide(check: Check, result, paired_metric: str, policy) -> Check:
    from slimbench.bench.measure.paired import classify, time_ratio

    ratio, (lo, hi) = time_ratio(result.ratios[paired_metric])  # candidate / baseline time
    mode, allowed = policy.allowance("latency", check.metric)
    paired = PairedLatency(ratio=ratio, ci95=(lo, hi), pairs=result.pairs,
                           seconds=result.seconds, scenario=result.scenario)
    what = (f"paired re-measurement: time ratio {ratio:.3f} [{lo:.3f}, {hi:.3f}] over "
            f"{result.pairs} pairs")
    if allowed is None or mode != "relative":
        return dataclasses.replace(check, paired_latency=paired,
                                   why=f"{what} (reported, not gated)")
    verdict, why = classify(ratio, (lo, hi), allowed)
    return dataclasses.replace(check, status="fail" if verdict == "slower" else "pass",
                               paired_latency=paired, why=f"{what}: {verdict} ({why})")

"""The regression gate: candidate rows vs baseline rows under a per-metric policy.

Fails closed: a baseline metric the candidate lacks (failed cell, dropped task) fails the gate.
Direction comes from each row's ``higher_is_better``. Latency is noisy, so a latency
regression must both exceed the allowed relative change (the minimum effect size) and be
significant: the candidate's and the baseline's 95% intervals of the median must not overlap.
Quality and size are deterministic for a given artifact and data, so any change beyond the
allowance counts.

Policy YAML (every key optional)::

    default: {latency: 0.10, quality: 0.02, size: 0.05, memory: 0.25}   # allowed relative change
    metrics:                                                         # per metric name
      perplexity.perplexity: {relative: 0.01}
      docstring_summary.bleu: {absolute: 0.5}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from slimbench.errors import UsageError

DEFAULTS = {"latency": 0.10, "quality": 0.02, "size": 0.05, "memory": 0.25}


@dataclasses.dataclass(frozen=True)
class Policy:
    default: dict
    metrics: dict

    def allowance(self, kind: str, metric: str) -> tuple[str, float]:
        """("relative" | "absolute", allowed change in the bad direction)."""
        rule = self.metrics.get(metric) or self.metrics.get(metric.split("@")[0])
        if rule:
            key = "absolute" if "absolute" in rule else "relative"
            return key, float(rule[key])
        return "relative", float(self.default.get(kind, DEFAULTS.get(kind, 0.0)))


def load_policy(path: Path | None) -> Policy:
    if path is None:
        return Policy(dict(DEFAULTS), {})
    from slimbench.files import read_yaml

    data = read_yaml(path, "policy file") or {}
    if not isinstance(data, dict) or set(data) - {"default", "metrics"}:
        raise UsageError(f"{path}: a policy has only 'default' and 'metrics'")
    default = dict(DEFAULTS) | (data.get("default") or {})
    metrics = data.get("metrics") or {}
    for name, rule in metrics.items():
        if not isinstance(rule, dict) or len(rule) != 1 or not set(rule) <= {"relative",
                                                                             "absolute"}:
            raise UsageError(f"{path}: metric {name}: give one of relative / absolute")
    for kind, value in default.items():
        if kind not in DEFAULTS or not isinstance(value, int | float) or value < 0:
            raise UsageError(f"{path}: default {kind}: must be one of {sorted(DEFAULTS)} with a "
                             "non-negative number")
    return Policy(default, metrics)


def _key(row: dict) -> tuple:
    return row["variant"], row["backend"], row["device"], row["metric"]


def _check(base: dict, cand: dict | None, policy: Policy) -> dict:
    out = {"variant": base["variant"], "backend": base["backend"], "device": base["device"],
           "metric": base["metric"], "kind": base["kind"], "baseline": base["value"],
           "candidate": None if cand is None else cand["value"],
           "higher_is_better": base["higher_is_better"]}
    if cand is None or cand["value"] is None:
        return out | {"status": "fail", "why": "missing in the candidate"}
    b, c = base["value"], cand["value"]
    worse = (b - c) if base["higher_is_better"] else (c - b)  # > 0: moved the bad way
    mode, allowed = policy.allowance(base["kind"], base["metric"])
    if mode == "absolute":
        change = worse
    else:
        change = worse / abs(b) if b else (float("inf") if worse > 0 else 0.0)
    out |= {"change": (c - b) / abs(b) if b else None, "allowed": allowed, "mode": mode}
    if change <= allowed:
        return out | {"status": "pass", "why": ""}
    if base["kind"] == "latency" and None not in (base["ci_low"], cand["ci_low"]):
        separated = (cand["ci_low"] > base["ci_high"] if not base["higher_is_better"]
                     else cand["ci_high"] < base["ci_low"])
        if not separated:
            return out | {"status": "pass", "why": "within noise: 95% intervals overlap"}
    what = f"{abs(worse):.4g}" if mode == "absolute" else f"{change:.1%}"
    return out | {"status": "fail", "why": f"worse by {what} (allowed {allowed:g} {mode})"}


def compare(baseline: list[dict], candidate: list[dict], policy: Policy) -> list[dict]:
    """One check per baseline row, in baseline order."""
    if not baseline:
        raise UsageError("the baseline has no metrics to compare against")
    cand = {_key(r): r for r in candidate}
    return [_check(b, cand.get(_key(b)), policy) for b in baseline]


def markdown(checks: list[dict]) -> str:
    """A Markdown summary (usable as a CI step summary): verdict line, then failures first."""
    failed = [c for c in checks if c["status"] == "fail"]
    verdict = (f"**slimbench gate: FAIL** ({len(failed)} of {len(checks)} checks)" if failed
               else f"**slimbench gate: PASS** ({len(checks)} checks)")
    lines = [verdict, "", "| status | variant | backend | device | metric | baseline | "
             "candidate | change | note |", "|---|---|---|---|---|---|---|---|---|"]

    def fmt(v):
        return "—" if v is None else f"{v:.4g}"

    for c in sorted(checks, key=lambda c: c["status"] != "fail"):
        change = "—" if c.get("change") is None else f"{c['change']:+.1%}"
        cells = [c["status"].upper(), c["variant"], c["backend"] or "", c["device"] or "",
                 c["metric"], fmt(c["baseline"]), fmt(c["candidate"]), change, c["why"]]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"

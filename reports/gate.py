"""The regression gate: candidate rows vs baseline rows under a per-metric policy.

Fails closed: a baseline metric the candidate lacks (failed cell, dropped task) fails the gate.
Direction comes from each row's ``higher_is_better``. Latency is noisy, so a latency
regression must both exceed the allowed relative change (the minimum effect size) and be
significant: the candidate's and the baseline's 95% intervals of the median must not overlap.
Those intervals are within one run; a shared machine also drifts between runs, which no
single run shows, so the baseline may be several runs of one build: each metric is then held
to the worst of them. Quality and size are deterministic for a given artifact and data, so any
change beyond the allowance counts.

Policy YAML (every key optional)::

    default: {latency: 0.10, quality: 0.02, size: 0.05, memory: 0.25}   # allowed relative change
    metrics:                                                         # per metric name
      perplexity.perplexity: {relative: 0.01}
      docstring_summary.bleu: {absolute: 0.5}
      peak_rss_bytes: {report: true}                                 # shown, never gated

``null`` for a kind (``default: {latency: null}``) reports that kind without gating it: what a
baseline made on another machine needs, since latency and memory do not transfer between
machines while quality and size do. Report-only rows never pass a missing metric silently:
they still need to be present.

A NaN or infinite candidate figure fails its check; in a baseline it is an error. Runs whose
suites measure different things (``suite_differences``) are not compared: the caller refuses
them unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

from slimbench.errors import UsageError
from slimbench.reports.table import is_finite

DEFAULTS = {"latency": 0.10, "quality": 0.02, "size": 0.05, "memory": 0.25}


@dataclasses.dataclass(frozen=True)
class Policy:
    default: dict
    metrics: dict

    def allowance(self, kind: str, metric: str) -> tuple[str, float | None]:
        """("relative" | "absolute" | "report", allowed change in the bad direction; None
        for report-only)."""
        rule = self.metrics.get(metric) or self.metrics.get(metric.split("@")[0])
        if rule:
            key = next(iter(rule))
            return key, None if key == "report" else float(rule[key])
        allowed = self.default.get(kind, DEFAULTS.get(kind, 0.0))
        return ("report", None) if allowed is None else ("relative", float(allowed))


def load_policy(path: Path | None) -> Policy:
    if path is None:
        return Policy(dict(DEFAULTS), {})
    from slimbench.files import read_yaml

    data = read_yaml(path, "policy file") or {}
    if not isinstance(data, dict) or set(data) - {"default", "metrics"}:
        raise UsageError(f"{path}: a policy has only 'default' and 'metrics'")
    for key in ("default", "metrics"):
        if not isinstance(data.get(key) or {}, dict):
            raise UsageError(f"{path}: {key} must be a mapping, e.g. "
                             + ("{latency: 0.10}" if key == "default" else
                                "{perplexity.perplexity: {relative: 0.01}}"))
    default = dict(DEFAULTS) | (data.get("default") or {})
    metrics = data.get("metrics") or {}
    for name, rule in metrics.items():
        if not isinstance(rule, dict) or len(rule) != 1 or not set(rule) <= {
                "relative", "absolute", "report"}:
            raise UsageError(f"{path}: metric {name}: give one of relative / absolute / report")
        key, value = next(iter(rule.items()))
        # NaN would make every comparison false (an identical candidate fails "allowed
        # nan%"), infinity would gate nothing: `report: true` says that plainly
        if key == "report" and value is not True or key != "report" and not (
                is_finite(value) and value >= 0):
            raise UsageError(f"{path}: metric {name}: {key} must be "
                             f"{'true' if key == 'report' else 'a non-negative number'}, "
                             f"got {value!r}")
    for kind, value in default.items():
        if kind not in DEFAULTS:
            raise UsageError(f"{path}: default {kind}: must be one of {sorted(DEFAULTS)}")
        if value is not None and not (is_finite(value) and value >= 0):
            raise UsageError(f"{path}: default {kind}: must be a non-negative number (or null: "
                             f"report only), got {value!r}")
    return Policy(default, metrics)


def row_key(row: dict) -> tuple:
    return row["variant"], row["backend"], row["device"], row["metric"]


def worst_run(runs: list[dict]) -> dict:
    """The baseline run that is worst for this metric (the bar a candidate must not fall
    below by more than the allowance)."""
    key = (lambda r: -r["value"]) if not runs[0]["higher_is_better"] else (lambda r: r["value"])
    return min(runs, key=key)


def _check(runs: list[dict], cand: dict | None, policy: Policy) -> dict:
    """``runs``: this metric in each baseline run (one, or repeated runs of the same build)."""
    base = runs[0]
    values = sorted(r["value"] for r in runs)
    b = statistics.median(values)
    out = {"variant": base["variant"], "backend": base["backend"], "device": base["device"],
           "metric": base["metric"], "kind": base["kind"], "baseline": b,
           "baseline_range": [values[0], values[-1]], "baseline_runs": len(runs),
           "candidate": None if cand is None else cand["value"],
           "higher_is_better": base["higher_is_better"]}
    if cand is None or cand["value"] is None:
        return out | {"status": "fail", "why": "missing in the candidate"}
    c = cand["value"]
    if not math.isfinite(c):  # a NaN compares false with everything: it would pass
        return out | {"status": "fail", "why": "not a finite number"}
    out["change"] = (c - b) / abs(b) if b else None
    mode, allowed = policy.allowance(base["kind"], base["metric"])
    if allowed is None:
        return out | {"status": "info", "why": "reported, not gated (policy)"}
    # Compared with the worst baseline run: what one build has already measured is not a
    # regression. With one baseline run this is that run.
    bar = worst_run(runs)
    w = bar["value"]
    worse = (w - c) if base["higher_is_better"] else (c - w)  # > 0: moved the bad way
    if mode == "absolute":
        change = worse
    else:
        change = worse / abs(w) if w else (float("inf") if worse > 0 else 0.0)
    out |= {"allowed": allowed, "mode": mode}
    if change <= allowed:
        return out | {"status": "pass", "why": ""}
    if base["kind"] == "latency" and all(is_finite(x) for x in (
            bar["ci_low"], bar["ci_high"], cand["ci_low"], cand["ci_high"])):
        separated = (cand["ci_low"] > bar["ci_high"] if not base["higher_is_better"]
                     else cand["ci_high"] < bar["ci_low"])
        if not separated:
            return out | {"status": "pass", "why": "within noise: 95% intervals overlap"}
    if mode == "absolute":
        what, limit = f"{abs(worse):.4g}", f"{allowed:g}"
    else:
        what, limit = f"{change:.1%}", f"{allowed * 100:g}%"
    than = f"the worst of {len(runs)} baseline runs ({w:.4g})" if len(runs) > 1 else \
        "the baseline run"
    return out | {"status": "fail", "why": f"worse than {than} by {what} (allowed {limit})"}


def compare(baseline: list[dict], candidate: list[dict], policy: Policy,
            repeats: list[list[dict]] = ()) -> list[dict]:
    """One check per baseline row, in baseline order.

    ``repeats``: more baseline runs of the same build. Each metric is then held to the worst
    of the runs, so the gate learns the run-to-run spread of the machine it runs on instead
    of failing on it (the A/A figure in the README).
    """
    if not baseline:
        raise UsageError("the baseline has no metrics to compare against")
    names = {r["metric"] for r in baseline} | {r["metric"].split("@")[0] for r in baseline}
    unknown = sorted(set(policy.metrics) - names)
    if unknown:  # a misspelt rule would silently leave its metric on the default
        raise UsageError(f"the policy names metric(s) the baseline does not have: "
                         f"{', '.join(unknown)}; known: {', '.join(sorted(names))}")
    cand = {row_key(r): r for r in candidate}
    return [_check(runs, cand.get(row_key(runs[0])), policy)
            for runs in _runs_per_metric(baseline, repeats)]


def _runs_per_metric(baseline: list[dict], repeats) -> list[list[dict]]:
    """For each baseline row: that metric in every baseline run that has it (first run first)."""
    more = [{row_key(r): r for r in rows if r["value"] is not None} for rows in repeats]
    out = []
    for b in baseline:
        if b["value"] is None:
            raise UsageError(f"the baseline lacks a value for {b['variant']} {b['metric']}")
        runs = [b] + [m[row_key(b)] for m in more if row_key(b) in m]
        if not all(math.isfinite(r["value"]) for r in runs):
            raise UsageError(f"the baseline's value for {b['variant']} {b['metric']} is not a "
                             f"finite number: {[r['value'] for r in runs]}")
        out.append(runs)
    return out


def verdict(checks: list[dict]) -> str:
    """One line: "slimbench gate: PASS (...)" or "... FAIL (...)", with counts."""
    failed = [c for c in checks if c["status"] == "fail"]
    gated = [c for c in checks if c["status"] != "info"]
    shown = len(checks) - len(gated)
    extra = f"; {shown} reported, not gated" if shown else ""
    if failed:
        return f"slimbench gate: FAIL ({len(failed)} of {len(gated)} checks{extra})"
    return f"slimbench gate: PASS ({len(gated)} checks{extra})"


def markdown(checks: list[dict]) -> str:
    """A Markdown summary (usable as a CI step summary): verdict line, then failures first."""
    head, _, counts = verdict(checks).partition(" (")
    lines = [f"**{head}** ({counts}", "",
             "| status | variant | backend | device | metric | baseline | candidate | change | "
             "note |", "|---|---|---|---|---|---|---|---|---|"]

    def fmt(v):
        return "—" if v is None else f"{v:.4g}"

    order = {"fail": 0, "pass": 1, "info": 2}
    for c in sorted(checks, key=lambda c: order[c["status"]]):
        change = "—" if c.get("change") is None else f"{c['change']:+.1%}"
        cells = [c["status"].upper(), c["variant"], c["backend"] or "", c["device"] or "",
                 c["metric"], fmt(c["baseline"]), fmt(c["candidate"]), change, c["why"]]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def excess_over_worst(baselines: list[list[dict]], candidate: list[dict]) -> dict[str, float]:
    """Per latency metric name, the largest relative amount (over variants and devices) by
    which the candidate is worse than the worst baseline run; negative when better. Over A/A
    runs (one build) this is the smallest allowance that would have passed them all."""
    cand = {row_key(r): r for r in candidate}
    out: dict[str, float] = {}
    for runs in _runs_per_metric(baselines[0], baselines[1:]):
        b, c = runs[0], cand.get(row_key(runs[0]))
        if b["kind"] != "latency" or c is None or not is_finite(c["value"]):
            continue
        w = worst_run(runs)["value"]
        worse = (w - c["value"]) if b["higher_is_better"] else (c["value"] - w)
        out[b["metric"]] = max(out.get(b["metric"], -float("inf")), worse / abs(w))
    return out


# what a suite measures; name, timeout, devices and baseline_variant do not change a figure
SUITE_KEYS = ("tasks", "task_limit", "perplexity_limit", "latency", "threads")
VARIANT_KEYS = ("model", "recipe", "quality")


def suite_differences(base: dict, cand: dict, keys=SUITE_KEYS) -> list[str]:
    """What the two suites (as in ``suite.json``) measure differently, one short text each,
    e.g. ``perplexity_limit: 3 -> 2``. Variants only one side has are not differences: a
    baseline metric the candidate lacks already fails the gate."""
    def text(value) -> str:
        return json.dumps(value, sort_keys=True)

    def same(a, b) -> bool:  # tuples (a Suite's to_dict) and lists (suite.json) alike
        return json.loads(text(a)) == json.loads(text(b))

    out = [f"{key}: {text(base.get(key))} -> {text(cand.get(key))}" for key in keys
           if not same(base.get(key), cand.get(key))]
    theirs = {v["name"]: v for v in cand.get("variants") or []}
    for v in base.get("variants") or []:
        other = theirs.get(v["name"])
        out += [f"variant {v['name']} {key}: {text(v.get(key))} -> {text(other.get(key))}"
                for key in VARIANT_KEYS if other and not same(v.get(key), other.get(key))]
    return out


def suite_problem(base: dict | None, cand: dict | None, base_name, cand_name,
                  keys=SUITE_KEYS) -> str | None:
    """Why a baseline and a candidate cannot be compared (one line), or None if they can."""
    for suite, name in ((base, base_name), (cand, cand_name)):
        if suite is None:
            return (f"cannot verify that {base_name} and {cand_name} measure the same thing "
                    f"(no suite in {name})")
    diffs = suite_differences(base, cand, keys)
    if diffs:
        return f"{base_name} and {cand_name} measure different things: {'; '.join(diffs)}"
    return None

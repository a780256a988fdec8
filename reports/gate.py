"""The regression gate: candidate rows vs baseline rows under a per-metric policy.

Fails closed: a baseline metric the candidate lacks (failed cell, dropped task) fails the gate.
Direction comes from each row's ``higher_is_better``.

Quality is tested *paired* wherever both runs saved their per-example outputs (a run
directory, or a results file with its run's ``cells/`` beside it): the same examples are
resampled for both sides (``tasks/paired.py``), which gives an interval of the change, and
per metric one of two tests decides:

- ``significance``: fail when the loss exceeds the allowance *and* the interval excludes no
  loss. The default for generation metrics, whose 20-example intervals are wide: only a
  demonstrated loss fails, and the check says which loss it could have detected at all.
- ``non_inferiority``: fail unless the interval's bad end stays within the allowance. The
  default for perplexity, which is precise when paired (per-text NLL moves together).

Without per-example data a quality metric is held to its point value, as are size metrics.

Latency and memory are compared only between runs whose environment fingerprints match
(``slimbench/fingerprint.py``: CPU model, kernel ISA, threads, GPU, library versions);
otherwise they are reported with the reason. Between matching runs a latency regression must
exceed the allowance and be significant (the 95% intervals of the medians must not overlap).
Sequential runs on a shared host drift by more than that: measure latency paired instead
(``slimbench compare``, a suite's acceptance criteria). A baseline may be several runs of one
build: each metric is then held to the worst of them. A quality check across a kernel-relevant
ISA change (int8 kernels differ between AVX2, AVX-512 VNNI and AMX) says so in its note.

Policy YAML (every key optional)::

    default: {latency: 0.10, quality: 0.02, size: 0.05, memory: 0.25}   # allowed relative change
    metrics:                                                         # per metric name
      perplexity.perplexity: {relative: 0.01, test: non_inferiority}
      docstring_summary.bleu: {absolute: 0.5, test: significance}
      method_name.f1: {test: non_inferiority}                        # default allowance
      peak_rss_bytes: {report: true}                                 # shown, never gated

``null`` for a kind (``default: {latency: null}``) reports that kind without gating it: what a
baseline made on another machine needs. Report-only rows never pass a missing metric silently:
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
from typing import Literal

from slimbench.errors import UsageError
from slimbench.reports.table import is_finite
from slimbench.schema import Check, PairedTest, Row

DEFAULTS = {"latency": 0.10, "quality": 0.02, "size": 0.05, "memory": 0.25}
TESTS = ("significance", "non_inferiority")
ALLOWANCES = ("relative", "absolute", "report")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A policy's rule for one metric (every field optional: the defaults apply).

    Attributes:
        mode: relative, absolute or report (shown, never gated); None: the kind's default.
        allowed: the allowed change in the bad direction (relative or absolute mode).
        test: the paired quality test, significance or non_inferiority; None: the default.
    """

    mode: Literal["relative", "absolute", "report"] | None = None
    allowed: float | None = None
    test: str | None = None


@dataclasses.dataclass(frozen=True)
class Policy:
    """A gate policy as loaded (``load_policy``): each kind's default allowance (None:
    reported only) and the per-metric rules as the YAML gives them."""

    default: dict[str, float | None]
    metrics: dict[str, dict]

    def allowance(self, kind: str, metric: str) -> tuple[str, float | None]:
        """("relative" | "absolute" | "report", allowed change in the bad direction; None
        for report-only)."""
        rule = self.rule(metric)
        if rule.mode:
            return rule.mode, rule.allowed
        allowed = self.default.get(kind, DEFAULTS.get(kind, 0.0))
        return ("report", None) if allowed is None else ("relative", float(allowed))

    def rule(self, metric: str) -> Rule:
        """The rule of ``metric``, or of its name before "@" (all its scenarios)."""
        given = self.metrics.get(metric) or self.metrics.get(metric.split("@")[0]) or {}
        mode = next((k for k in ALLOWANCES if k in given), None)
        return Rule(mode, float(given[mode]) if mode in ("relative", "absolute") else None,
                    given.get("test"))

    def test(self, metric: str, task_kind: str) -> str:
        """The paired quality test of ``metric``: the policy's, else non-inferiority for
        perplexity (precise when paired) and significance for everything else."""
        return self.rule(metric).test or (
            "non_inferiority" if task_kind == "perplexity" else "significance")


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
        keys = set(rule) - {"test"} if isinstance(rule, dict) else None
        if keys is None or len(keys) > 1 or not keys <= set(ALLOWANCES) or not rule:
            raise UsageError(f"{path}: metric {name}: give one of relative / absolute / report "
                             "(and optionally test: significance | non_inferiority)")
        if "test" in rule and rule["test"] not in TESTS:
            raise UsageError(f"{path}: metric {name}: test must be one of {', '.join(TESTS)}, "
                             f"got {rule['test']!r}")
        if not keys:
            continue
        key = next(iter(keys))
        value = rule[key]
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


def row_key(row: Row) -> tuple:
    return row.variant, row.backend, row.device, row.metric


def worst_run(runs: list[Row]) -> Row:
    """The baseline run that is worst for this metric (the bar a candidate must not fall
    below by more than the allowance)."""
    key = (lambda r: -r.value) if not runs[0].higher_is_better else (lambda r: r.value)
    return min(runs, key=key)


def _paired_quality(base: Row, cand: Row, evidence, policy: Policy, mode: str,
                    allowed: float) -> PairedTest | str | None:
    """The paired test of a quality row; why it could not be paired (the examples differ);
    or None where either run lacks its examples."""
    from slimbench.tasks.paired import paired_test

    task, _, metric = base.metric.partition(".")
    b_ev, c_ev = evidence[0].get(base.cell), evidence[1].get(cand.cell)
    bt = b_ev.tasks.get(task) if b_ev else None
    ct = c_ev.tasks.get(task) if c_ev else None
    if bt is None or ct is None:
        return None
    test = policy.test(base.metric, bt.kind)
    try:
        return paired_test(bt.examples, ct.examples, bt.kind, metric,
                           bt.options.get(metric, {}), base.higher_is_better, test, mode,
                           allowed)
    except UsageError as e:  # other examples on each side: nothing to pair
        return f"unpaired ({e})"


def _paired_why(res: PairedTest, mode: str) -> str:
    """A paired test's reason, with the loss it could detect at all."""
    name = res.metric
    if res.detectable == 0 and res.ci95 == (0.0, 0.0):  # nothing varies: no power to speak of
        return f"{name}: identical on all {res.n} paired examples"
    shown = f"{res.detectable_relative:.1%}" if mode == "relative" and \
        res.detectable_relative is not None else f"{res.detectable:.3g}"
    return f"{res.why}; with n={res.n} it detects a loss of {shown}"


def _environment_note(base: Row, cand: Row, evidence) -> tuple[list[str], list[str]]:
    """(every difference, the kernel-relevant ones) between the two rows' environments; both
    empty where either run did not record its environment (files from before it was
    recorded are compared as they always were)."""
    from slimbench.fingerprint import differences, kernel_differences

    b_ev, c_ev = evidence[0].get(base.cell), evidence[1].get(cand.cell)
    b_fp = b_ev.fingerprint if b_ev else None
    c_fp = c_ev.fingerprint if c_ev else None
    if b_fp is None or c_fp is None:
        return [], []
    return differences(b_fp, c_fp), kernel_differences(b_fp, c_fp)


def _check(runs: list[Row], cand: Row | None, policy: Policy, evidence=None) -> Check:
    """``runs``: this metric in each baseline run (one, or repeated runs of the same build).
    ``evidence``: (baseline, candidate) ``load_evidence`` maps, or None to compare the rows
    alone (no paired tests, no environment check)."""
    base = runs[0]
    values = sorted(r.value for r in runs)
    b = statistics.median(values)
    head = {"variant": base.variant, "backend": base.backend, "device": base.device,
            "cell": base.cell, "candidate_cell": None if cand is None else cand.cell,
            "metric": base.metric, "kind": base.kind, "baseline_value": b,
            "baseline_range": (values[0], values[-1]), "baseline_runs": len(runs),
            "candidate_value": None if cand is None else cand.value,
            "higher_is_better": base.higher_is_better}

    def check(status: str, why: str, **more) -> Check:
        return Check(**head, status=status, why=why, **more)

    if cand is None or cand.value is None:
        return check("fail", "missing in the candidate")
    c = cand.value
    if not math.isfinite(c):  # a NaN compares false with everything: it would pass
        return check("fail", "not a finite number")
    head["change"] = (c - b) / abs(b) if b else None
    mode, allowed = policy.allowance(base.kind, base.metric)
    if allowed is None:
        return check("info", "reported, not gated (policy)")
    note, kernel = "", []
    if evidence is not None:
        diffs, kernel = _environment_note(base, cand, evidence)
        if base.kind in ("latency", "memory") and diffs:
            return check("info", "not compared: measured in another environment "
                         f"({'; '.join(diffs)}); measure both paired with `slimbench compare`")
    head |= {"mode": mode, "allowed": allowed}
    if evidence is not None:
        note = f" [across {'; '.join(kernel)}]" if kernel and base.kind == "quality" else ""
        paired = _paired_quality(base, cand, evidence, policy, mode, allowed) \
            if base.kind == "quality" else None
        if isinstance(paired, PairedTest):
            return check(paired.status, _paired_why(paired, mode) + note, paired=paired)
        if paired:
            note = f" [{paired}]" + note
    # Compared with the worst baseline run: what one build has already measured is not a
    # regression. With one baseline run this is that run.
    bar = worst_run(runs)
    w = bar.value
    worse = (w - c) if base.higher_is_better else (c - w)  # > 0: moved the bad way
    if mode == "absolute":
        change = worse
    else:
        change = worse / abs(w) if w else (float("inf") if worse > 0 else 0.0)
    if change <= allowed:
        return check("pass", note.strip())
    if base.kind == "latency" and all(is_finite(x) for x in (
            bar.ci_low, bar.ci_high, cand.ci_low, cand.ci_high)):
        separated = (cand.ci_low > bar.ci_high if not base.higher_is_better
                     else cand.ci_high < bar.ci_low)
        if not separated:
            return check("pass", "within noise: 95% intervals overlap" + note)
    if mode == "absolute":
        what, limit = f"{abs(worse):.4g}", f"{allowed:g}"
    else:
        what, limit = f"{change:.1%}", f"{allowed * 100:g}%"
    than = f"the worst of {len(runs)} baseline runs ({w:.4g})" if len(runs) > 1 else \
        "the baseline run"
    return check("fail", f"worse than {than} by {what} (allowed {limit})" + note)


def compare(baseline: list[Row], candidate: list[Row], policy: Policy,
            repeats: list[list[Row]] = (), evidence=None) -> list[Check]:
    """One check per baseline row, in baseline order.

    ``repeats``: more baseline runs of the same build. Each metric is then held to the worst
    of the runs, so the gate learns the run-to-run spread of the machine it runs on instead
    of failing on it.
    ``evidence``: ``(load_evidence(baseline), load_evidence(candidate))``: quality is then
    tested paired where both have examples, and latency and memory compared only between
    matching environments.
    """
    if not baseline:
        raise UsageError("the baseline has no metrics to compare against")
    names = {r.metric for r in baseline} | {r.metric.split("@")[0] for r in baseline}
    unknown = sorted(set(policy.metrics) - names)
    if unknown:  # a misspelt rule would silently leave its metric on the default
        raise UsageError(f"the policy names metric(s) the baseline does not have: "
                         f"{', '.join(unknown)}; known: {', '.join(sorted(names))}")
    cand = {row_key(r): r for r in candidate}
    return [_check(runs, cand.get(row_key(runs[0])), policy, evidence)
            for runs in _runs_per_metric(baseline, repeats)]


def _runs_per_metric(baseline: list[Row], repeats) -> list[list[Row]]:
    """For each baseline row: that metric in every baseline run that has it (first run first)."""
    more = [{row_key(r): r for r in rows if r.value is not None} for rows in repeats]
    out = []
    for b in baseline:
        if b.value is None:
            raise UsageError(f"the baseline lacks a value for {b.variant} {b.metric}")
        runs = [b] + [m[row_key(b)] for m in more if row_key(b) in m]
        if not all(math.isfinite(r.value) for r in runs):
            raise UsageError(f"the baseline's value for {b.variant} {b.metric} is not a "
                             f"finite number: {[r.value for r in runs]}")
        out.append(runs)
    return out


def verdict(checks: list[Check]) -> str:
    """One line: "slimbench gate: PASS (...)" or "... FAIL (...)", with counts."""
    failed = [c for c in checks if c.status == "fail"]
    gated = [c for c in checks if c.status != "info"]
    shown = len(checks) - len(gated)
    extra = f"; {shown} reported, not gated" if shown else ""
    if failed:
        return f"slimbench gate: FAIL ({len(failed)} of {len(gated)} checks{extra})"
    return f"slimbench gate: PASS ({len(gated)} checks{extra})"


def markdown(checks: list[Check]) -> str:
    """A Markdown summary (usable as a CI step summary): verdict line, then failures first."""
    head, _, counts = verdict(checks).partition(" (")
    lines = [f"**{head}** ({counts}", "",
             "| status | variant | backend | device | metric | baseline | candidate | change | "
             "note |", "|---|---|---|---|---|---|---|---|---|"]

    def fmt(v):
        return "—" if v is None else f"{v:.4g}"

    order = {"fail": 0, "pass": 1, "info": 2}
    for c in sorted(checks, key=lambda c: order[c.status]):
        change = "—" if c.change is None else f"{c.change:+.1%}"
        cells = [c.status.upper(), c.variant, c.backend or "", c.device or "",
                 c.metric, fmt(c.baseline_value), fmt(c.candidate_value), change, c.why]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"


# what a suite measures; name, timeout, devices and baseline_variant do not change a figure
SUITE_KEYS = ("tasks", "task_limit", "perplexity_limit", "latency", "threads")
VARIANT_KEYS = ("model", "recipe", "quality")


def suite_differences(base: dict, cand: dict, keys=SUITE_KEYS,
                      added_tasks: bool = False) -> list[str]:
    """What the two suites (as in ``suite.json``) measure differently, one short text each,
    e.g. ``perplexity_limit: 3 -> 2``. Variants only one side has are not differences: a
    baseline metric the candidate lacks already fails the gate. With ``added_tasks``, tasks
    only the candidate runs are not either (their metrics are new: not compared); the caller
    allows that where the cell-wide figures an extra task can move (peak memory, the cell's
    time) are not gated."""
    def text(value) -> str:
        return json.dumps(value, sort_keys=True)

    def same(a, b) -> bool:  # tuples (a Suite's to_dict) and lists (suite.json) alike
        return json.loads(text(a)) == json.loads(text(b))

    def kept(a, b) -> bool:  # every task of a is still in b
        theirs = [text(t) for t in json.loads(text(b or []))]
        return all(text(t) in theirs for t in json.loads(text(a or [])))

    out = [f"{key}: {text(base.get(key))} -> {text(cand.get(key))}" for key in keys
           if not (kept if key == "tasks" and added_tasks else same)(base.get(key),
                                                                     cand.get(key))]
    theirs = {v["name"]: v for v in cand.get("variants") or []}
    for v in base.get("variants") or []:
        other = theirs.get(v["name"])
        out += [f"variant {v['name']} {key}: {text(v.get(key))} -> {text(other.get(key))}"
                for key in VARIANT_KEYS if other and not same(v.get(key), other.get(key))]
    return out


def suite_problem(base: dict | None, cand: dict | None, base_name, cand_name,
                  keys=SUITE_KEYS, added_tasks: bool = False) -> str | None:
    """Why a baseline and a candidate cannot be compared (one line), or None if they can."""
    for suite, name in ((base, base_name), (cand, cand_name)):
        if suite is None:
            return (f"cannot verify that {base_name} and {cand_name} measure the same thing "
                    f"(no suite in {name})")
    diffs = suite_differences(base, cand, keys, added_tasks)
    if diffs:
        return f"{base_name} and {cand_name} measure different things: {'; '.join(diffs)}"
    return None

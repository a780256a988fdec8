"""A suite's acceptance criteria, judged within one run: each variant against its baseline.

Both sides of every criterion come from the same run on the same device, so a verdict holds
on any machine it is made on; nothing is compared with figures from another day or host.

- quality (``task.metric``): ``non_inferior: a`` / ``no_significant_loss: a`` are the paired
  bootstrap tests of ``tasks/paired.py`` (non-inferiority / significance, allowance
  ``a x |baseline|``, or ``a`` in the metric's units with ``mode: absolute``) on the
  per-example outputs both cells saved.
- latency (any metric of ``bench/measure/scenarios.py``: ``decode_ms_per_token``,
  ``prefill_ms``, ``generate_ms``, ``ttft_ms``, ``tpot_ms``, ``tokens_per_s``): one
  interleaved A/B (``bench/measure/paired.py``) per (variant, device, scenario) between the
  two cells' artifacts, shared by every criterion of that scenario; a rate's ratio is read as
  the inverse time ratio.
  ``speedup_at_least: s`` passes when the low end of the speedup's 95% interval (baseline time /
  candidate time) is >= s; ``slowdown_at_most: e`` when the high end of the interval of
  candidate / baseline is <= 1 + e.
- size and memory (the results schema's ``Memory`` fields; ``bytes_on_disk`` names
  ``model_bytes_on_disk``): ``ratio_at_most: r`` passes when candidate / baseline <= r.

The A/B's lengths are the suite's ``latency`` (prefill: ``prefill[0]``; decode:
``decode_contexts[0]`` and ``new_tokens``; generate: ``generate_prompt`` and ``new_tokens``),
its threads the suite's, its budget the suite's ``paired`` (``min_seconds``, ``max_seconds``,
``precision``, ``trial_seconds``; PairedConfig's defaults otherwise).

Fails closed: a criterion whose cell (or its baseline's) failed, did not finish or lacks the
figure fails with the reason; where a cell was skipped (a cuda device without a GPU) it is
skipped. Writes ``RUN/acceptance.json`` (every criterion and every A/B in full) and
``RUN/acceptance.md`` (a table and the verdict line).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

from slimbench import atomic
from slimbench.bench.orchestrate.suite import (
    LATENCY_CRITERIA,
    METRIC_ALIASES,
    QUALITY_CRITERIA,
    SIZE_CRITERIA,
    Suite,
    rule_parts,
    suite_baselines,
)
from slimbench.errors import SlimbenchError, UsageError
from slimbench.schema import Check

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One criterion to judge: ``variant`` against ``baseline`` on ``device``, ``metric``
    held to ``name`` (non_inferior, speedup_at_least, ...) with ``threshold``."""

    variant: str
    baseline: str
    device: str
    metric: str
    name: str
    threshold: float
    mode: str = "relative"  # a quality criterion's allowance: x |baseline| or metric units

    def check(self, status: str, why: str, **more) -> Check:
        """Its verdict (an absolute allowance's mode recorded; relative, the default, not)."""
        mode = {"mode": self.mode} if self.mode != "relative" else {}
        return Check(variant=self.variant, baseline=self.baseline, device=self.device,
                     metric=self.metric, criterion=self.name, threshold=self.threshold,
                     status=status, why=why, **mode, **more)


def evaluate_acceptance(suite: Suite, run_dir: Path, say=print,
                        show_progress: bool = False) -> list[Check]:
    """Judge every criterion of ``suite.acceptance`` on the run in ``run_dir`` and write
    ``acceptance.json`` and ``acceptance.md`` there.

    Args:
        suite: the suite the run was made with.
        run_dir: its run directory (``cells/`` with their per-example outputs).
        say: where each failure and the verdict line go.
        show_progress: the latency A/B's progress bar (stderr, on a terminal).

    Returns:
        One check per (variant, device, metric, criterion): variant, baseline, device,
        metric, criterion, threshold, status (pass | fail | skipped), value, ci95, shown (the
        value and interval as text), why, and the details (``paired`` test or
        ``comparison``).
    """
    from slimbench.reports.table import load_cells

    run_dir = Path(run_dir)
    cells = {(c.cell.variant, c.cell.device): c for c in load_cells(run_dir)}
    baselines = suite_baselines(suite)
    judge = _Judge(suite, run_dir, cells, show_progress)
    checks = []
    for variant, criteria in suite.acceptance.items():
        base = baselines[variant]
        for device in suite.devices:
            for metric, rule in criteria.items():
                name, threshold, mode = rule_parts(rule)
                crit = Criterion(variant, base, device, metric, name, threshold, mode)
                check = judge.cells_problem(crit) or judge.check(crit)
                checks.append(dataclasses.replace(check, shown=_shown(check)))
    line = verdict_line(checks)
    for c in checks:
        if c.status == "fail":
            say(f"acceptance: FAIL {_name(c)}: {c.why}")
    say(line)
    document = {"suite": suite.name, "verdict": "fail" if _failed(checks) else "pass",
                "line": line, "criteria": [c.to_dict() for c in checks],
                "paired": suite.paired,
                "comparisons": list(judge.comparisons.values())}
    atomic.write_json(run_dir / "acceptance.json", document)
    atomic.write_text(run_dir / "acceptance.md", markdown(checks, suite.name))
    return checks


def _failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]


def verdict_line(checks: list[Check]) -> str:
    """``acceptance: PASS (n criteria)`` or ``acceptance: FAIL (k of n)``, with the skipped
    ones counted where there are any."""
    n, failed = len(checks), len(_failed(checks))
    skipped = sum(c.status == "skipped" for c in checks)
    tail = f"; {skipped} skipped" if skipped else ""
    if failed:
        return f"acceptance: FAIL ({failed} of {n}{tail})"
    return f"acceptance: PASS ({n} criteri{'on' if n == 1 else 'a'}{tail})"


def _name(check: Check) -> str:
    return (f"{check.variant} vs {check.baseline} on {check.device}: "
            f"{check.metric} {_rule_text(check)}")


def _rule_text(check: Check) -> str:
    """``non_inferior 0.02``; ``no_significant_loss 2 absolute`` for an absolute allowance."""
    mode = " absolute" if check.mode == "absolute" else ""
    return f"{check.criterion} {check.threshold:g}{mode}"


def _shown(check: Check) -> str:
    """The value and its interval as text: ``1.82x [1.60, 2.00]``, ``+0.012 [-0.01, 0.03]``."""
    value, ci = check.value, check.ci95
    if value is None:
        return "—"
    if check.criterion in QUALITY_CRITERIA:
        text = f"{value:+.4g}" + (f" [{ci[0]:+.4g}, {ci[1]:+.4g}]" if ci else "")
    else:
        unit = "x" if check.criterion == "speedup_at_least" else ""
        text = f"{value:.3f}{unit}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    return text


def markdown(checks: list[Check], name: str) -> str:
    """The criteria as a Markdown table, then the verdict line."""
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"# Acceptance: {cell(name)}", "",
             "| variant | baseline | device | metric | criterion | status | value [95% CI] "
             "| why |", "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        lines.append("| " + " | ".join(cell(x) for x in (
            c.variant, c.baseline, c.device, c.metric, _rule_text(c),
            c.status.upper(), c.shown, c.why)) + " |")
    return "\n".join(lines + ["", verdict_line(checks), ""])


class _Judge:
    """The evidence of one run, and the latency A/B's it has made (one per (variant,
    device, scenario), shared by the criteria that need it)."""

    def __init__(self, suite: Suite, run_dir: Path, cells: dict, show_progress: bool):
        self.suite, self.run_dir, self.cells = suite, run_dir, cells
        self.show_progress = show_progress
        self.comparisons: dict[tuple, dict] = {}
        self._evidence = None

    def cells_problem(self, crit: Criterion) -> Check | None:
        """Fail where either cell failed or has no result, skip where either was skipped."""
        failed, skipped = [], {}
        device = crit.device
        for name in (crit.variant, crit.baseline):
            res = self.cells.get((name, device))
            if res is None:
                failed.append(f"cell {name} on {device} has no result (the run did not finish)")
            elif res.status == "failed":
                failed.append(f"cell {res.cell.id} failed: {res.reason}")
            elif res.status == "skipped":
                skipped.setdefault(res.reason, []).append(res.cell.id)
        if failed:
            return crit.check("fail", "; ".join(failed))
        if skipped:
            return crit.check("skipped", "; ".join(
                f"cell{'s' if len(ids) > 1 else ''} {' and '.join(ids)} skipped: {reason}"
                for reason, ids in skipped.items()))
        return None

    def check(self, crit: Criterion) -> Check:
        """The criterion judged on its two cells (both ok: ``cells_problem``)."""
        cand = self.cells[(crit.variant, crit.device)]
        ref = self.cells[(crit.baseline, crit.device)]
        if crit.name in QUALITY_CRITERIA:
            return self.quality(crit, cand, ref)
        if crit.name in SIZE_CRITERIA:
            return _size(crit, cand, ref)
        assert crit.name in LATENCY_CRITERIA, crit.name  # the suite checked it
        return self.latency(crit, cand, ref)

    # ---- quality: the paired bootstrap on the saved examples ----------------------------
    def quality(self, crit: Criterion, cand, ref) -> Check:
        """The paired test of the two cells' saved examples."""
        from slimbench.reports.evidence import load_evidence
        from slimbench.tasks.paired import paired_test

        metric = crit.metric
        task, _, score = metric.partition(".")
        for res in (cand, ref):
            q = res.quality.get(task)
            if q is None or score not in q.metrics:
                return crit.check("fail", f"cell {res.cell.id} has no {metric}")
        if self._evidence is None:
            self._evidence = load_evidence(self.run_dir)
        sides = []
        for res in (ref, cand):
            ev = self._evidence.get(res.cell.id)
            te = ev.tasks.get(task) if ev else None
            if te is None:
                return crit.check("fail", f"cell {res.cell.id} saved no per-example outputs "
                                  f"of {task}: nothing to pair")
            sides.append(te)
        test = QUALITY_CRITERIA[crit.name]
        try:
            out = paired_test(sides[0].examples, sides[1].examples, sides[0].kind, score,
                              sides[0].options.get(score, {}),
                              ref.quality[task].metrics[score].higher_is_better, test,
                              crit.mode, crit.threshold)
        except UsageError as e:
            return crit.check("fail", f"{metric}: {e}")
        return crit.check(out.status, out.why, value=out.delta, ci95=out.ci95, paired=out)

    # ---- latency: one interleaved A/B per (variant, device, scenario) ---------------------
    def latency(self, crit: Criterion, cand, ref) -> Check:
        """The criterion read from the A/B of the two cells' artifacts."""
        from slimbench.bench.measure.paired import SCENARIO_OF_METRIC, time_ratio

        metric, name, threshold = crit.metric, crit.name, crit.threshold
        scenario = SCENARIO_OF_METRIC[metric]
        key = (cand.cell.variant, cand.cell.device, scenario)
        if key not in self.comparisons:
            self.comparisons[key] = self._compare(cand, ref, scenario)
        comparison = self.comparisons[key]
        which = {k: comparison[k] for k in ("variant", "device", "scenario")}
        if comparison["error"]:
            return crit.check("fail", comparison["error"], comparison=which)
        r = comparison["result"]["ratios"].get(metric)
        if r is None:
            return crit.check("fail", f"the {scenario} A/B measured no {metric}",
                              comparison=which)
        ratio, (lo, hi) = time_ratio(r)  # candidate time / baseline time (a rate inverted)
        # the A/B's own min effect plays no part here: the criterion's threshold decides
        warnings = [w for w in comparison["result"].get("warnings") or []
                    if "wider than the min effect" not in w]
        pairs = comparison["result"]["pairs"]
        what = (f"{metric} {r['baseline']:.4g} -> {r['candidate']:.4g} {r.get('unit', 'ms')} "
                f"(medians), "
                f"{pairs} interleaved pairs")
        if name == "speedup_at_least":
            low, high = 1 / hi, 1 / lo
            ok = low >= threshold
            why = (f"speedup {1 / ratio:.3f}x, 95% CI [{low:.3f}, {high:.3f}]: low end "
                   f"{low:.3f} {'>=' if ok else '<'} {threshold:g}; {what}")
            value, ci = 1 / ratio, (low, high)
        else:
            ok = hi <= 1 + threshold
            why = (f"ratio {ratio:.3f}, 95% CI [{lo:.3f}, {hi:.3f}]: high end {hi:.3f} "
                   f"{'<=' if ok else '>'} {1 + threshold:.3f}; {what}")
            value, ci = ratio, (lo, hi)
        why += "".join(f"; A/B warning: {w}" for w in warnings)
        return crit.check("pass" if ok else "fail", why, comparison=which, value=value,
                          ci95=ci, warnings=warnings)

    def _compare(self, cand, ref, scenario: str) -> dict:
        """The A/B of the two cells' artifacts: ``{variant, baseline, device, scenario,
        config, result (PairedResult.to_dict()), error}``."""
        from slimbench.bench.measure.cell import LatencyConfig
        from slimbench.bench.measure.paired import PairedConfig, paired_compare

        lat = LatencyConfig(**self.suite.latency)
        length = {"prefill": lambda: lat.prefill[0], "decode": lambda: lat.decode_contexts[0],
                  "generate": lambda: lat.generate_prompt}[scenario]()
        out = {"variant": cand.cell.variant, "baseline": ref.cell.variant,
               "device": cand.cell.device, "scenario": scenario, "config": None,
               "result": None, "error": None}
        sides = [_artifact(res) for res in (ref, cand)]
        if None in sides:
            res = (ref, cand)[sides.index(None)]
            return out | {"error": f"cell {res.cell.id} records no artifact to time"}
        try:
            config = PairedConfig(scenario=scenario, length=int(length),
                                  new_tokens=int(lat.new_tokens), device=cand.cell.device,
                                  threads=self.suite.threads or None, **self.suite.paired)
            out["config"] = config.to_dict()
            log.info("acceptance: timing %s against %s on %s (%s), %g-%g s",
                     cand.cell.variant, ref.cell.variant, cand.cell.device, scenario,
                     config.min_seconds, config.max_seconds)
            result = paired_compare(sides[0], sides[1], config,
                                    show_progress=self.show_progress)
        except SlimbenchError as e:
            return out | {"error": f"the {scenario} A/B failed: {e}"}
        except Exception as e:  # noqa: BLE001 - a criterion that cannot be measured fails
            log.debug("the %s A/B failed", scenario, exc_info=True)
            return out | {"error": f"the {scenario} A/B failed: {type(e).__name__}: {e}"}
        return out | {"result": result.to_dict()}


def _artifact(res) -> str | None:
    """What a cell measured: its artifact, or the model spec of a recipe-less variant."""
    return res.cell.artifact or (res.cell.model if not res.cell.recipe else None)


def _size(crit: Criterion, cand, ref) -> Check:
    """``ratio_at_most`` on a size or memory figure of the two cells."""
    field, limit = METRIC_ALIASES.get(crit.metric, crit.metric), crit.threshold
    values = []
    for res in (ref, cand):
        v = getattr(res.memory, field, None) if res.memory else None
        if not isinstance(v, int | float) or not math.isfinite(v):
            return crit.check("fail", f"cell {res.cell.id} has no {field}")
        values.append(v)
    base, value = values
    if base <= 0:
        return crit.check("fail", f"baseline {field} is {base}: no ratio")
    ratio = value / base
    ok = ratio <= limit
    return crit.check("pass" if ok else "fail", f"{field} {value:,} / {base:,} = {ratio:.4f} "
                      f"{'<=' if ok else '>'} {limit:g}", value=ratio, baseline_value=base,
                      candidate_value=value)

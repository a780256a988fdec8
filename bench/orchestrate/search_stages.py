"""The work a search does on one candidate's built artifact: its facts and ceilings, the
sequential screens on *tune*, the objective's measurement, and its scores on *test*.

``Stages`` holds only what that work needs (the budget, the task specs and metrics, the
baseline's figures and spec), never a loaded model, so it pickles: the search driver
(``search.py``) runs it in its own process, and ``search_ray.py`` ships it to a Ray node with
the baseline's tune records. Decisions that depend on the whole search (the time budget,
dominance, the order of confirmation) stay with the driver.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from slimbench.bench.orchestrate.search_budget import Budget
from slimbench.errors import SlimbenchError, UsageError
from slimbench.schema.search import Candidate, Screen, Speed

# objective -> (A/B scenario, metric); size and memory are not timed
OBJECTIVES: dict[str, tuple[str | None, str]] = {
    "decode": ("decode", "decode_ms_per_token"), "prefill": ("prefill", "prefill_ms"),
    "generate": ("generate", "generate_ms"), "size": (None, "model_bytes_on_disk"),
    "memory": (None, "peak_rss_bytes"),
}
# the sequential screen's bootstrap: a look's interval at 1 - 0.05/4 has 0.625% in each tail,
# 12 resamples of 2000 (400 would leave 2.5: too few for a stable percentile)
SCREEN_RESAMPLES = 2000
# ceilings a search checks: the artifact's own figures, and a peak measured in a process
CEILINGS = {"model_bytes_on_disk": "bytes_on_disk", "parameters": "parameters",
            "nonzero_parameters": "nonzero_parameters", "peak_rss_bytes": None}


@dataclasses.dataclass(frozen=True)
class Facts:
    """A model's figures known without running it."""

    bytes_on_disk: int | None
    parameters: int
    nonzero_parameters: int


@dataclasses.dataclass
class Loaded:
    """One model loaded for scoring: its runtime, tokenizer and facts."""

    runtime: Any
    tokenizer: Any
    facts: Facts


@dataclasses.dataclass
class Stages:
    """One candidate's stages after its build, wherever they run (module docstring).

    Attributes:
        model: the baseline's spec, as this process (or node) loads it.
        budget: the search's budget.
        specs: budget task -> its spec (a ``TaskSpec`` or a one-task ``LmEvalSpec``).
        metrics: budget task -> metric -> (its options, higher is better).
        device, threads: where and with how many intra-op threads every model runs.
        objective: the search's objective (``OBJECTIVES``).
        screening_alpha: the sequential screens' overall level.
        tune_limit, test_limit: examples per task at most on each split (None: all).
        base: the baseline's facts (for the ceilings).
    """

    model: str
    budget: Budget
    specs: dict[str, Any]
    metrics: dict[str, dict[str, tuple[dict[str, Any], bool]]]
    device: str
    threads: int | None
    objective: str
    screening_alpha: float
    tune_limit: int | None
    test_limit: int | None
    base: Facts
    _peak: dict[str, int | None] = dataclasses.field(default_factory=dict, repr=False)

    # -- models and examples -------------------------------------------------------------

    def load(self, spec: str) -> Loaded:
        from slimbench.bench.measure.cell import scoring_runtime

        loaded, runtime = scoring_runtime(spec, self.device, self.threads)
        info = loaded.info
        return Loaded(runtime, loaded.tokenizer,
                      Facts(info.bytes_on_disk, info.parameters, info.nonzero_parameters))

    def limit(self, split: str) -> int | None:
        return self.tune_limit if split == "tune" else self.test_limit

    def score(self, model: Loaded, task: str, split: str, offset: int = 0,
              limit: int | None = None) -> list[dict[str, Any]]:
        """Per-example records of ``task`` on ``split`` rows ``offset..offset+limit`` (an
        lm-eval task: its documents, split by index as ``split_docs`` does)."""
        from slimbench.tasks.generation import run_task

        spec = self.specs[task]
        if spec.kind == "lm_eval":
            from slimbench.tasks.lmeval_bridge import run_lmeval

            (res,) = run_lmeval(model.runtime, model.tokenizer, spec, limit,
                                resamples=SCREEN_RESAMPLES, split=split, offset=offset)
        else:
            res = run_task(model.runtime, model.tokenizer, spec, limit,
                           resamples=SCREEN_RESAMPLES, split=split, offset=offset)
        return res.records()

    def score_all(self, model: Loaded, split: str) -> list[dict[str, Any]]:
        """Every budget task's records on ``split`` (up to its limit)."""
        return [r for task in self.specs
                for r in self.score(model, task, split, 0, self.limit(split))]

    def peak_rss(self, spec: str) -> int | None:
        """Peak resident memory of a process that loads ``spec`` and decodes a few tokens
        (the cell function, in its own process, as a suite cell measures it)."""
        from slimbench.bench.measure.isolation import run_isolated
        from slimbench.bench.orchestrate.runner import CELL, cell_preload

        if spec not in self._peak:
            run = run_isolated(CELL, {
                "artifact": spec, "device": self.device, "threads": self.threads,
                "latency": {"prefill": [32], "decode_contexts": [], "new_tokens": 4,
                            "generate_prompt": 0, "repeats": 1, "min_seconds": 0.0},
                "tasks": [], "task_limit": None, "quality": False},
                preload=cell_preload(self.device))
            if run.status != "ok":
                raise SlimbenchError(f"peak memory of {spec}: {run.reason}")
            self._peak[spec] = run.result.result.memory.peak_rss_bytes
        return self._peak[spec]

    # -- the stages ----------------------------------------------------------------------

    def ceilings(self, rec: Candidate, path: str) -> str | None:
        """Why the candidate is over a ceiling of the budget, or None."""
        for ceiling in self.budget.ceilings:
            attr = CEILINGS[ceiling.field]
            if attr is None:
                mine, theirs = self.peak_rss(path), self.peak_rss(self.model)
            else:
                mine, theirs = getattr(rec, attr), getattr(self.base, attr)
            if mine is None or not theirs:
                return f"{ceiling.metric}: not known for this artifact or the baseline"
            if mine / theirs > ceiling.ratio:
                return (f"{ceiling.metric} {mine / theirs:.3f} x the baseline's, over the "
                        f"ceiling {ceiling.ratio:g}")
        return None

    def screen(self, rec: Candidate, path: str, tune: dict[str, list[dict[str, Any]]]
               ) -> Candidate:
        """Stages 2-3 of a built candidate (``rec`` holds its content key): its facts and
        ceilings, then per budget criterion a sequential paired test on growing prefixes of
        the tune examples against the baseline's records ``tune``."""
        from slimbench.tasks.sequential import look_sizes, screen_look

        t0 = time.monotonic()
        try:
            model = self.load(path)
        except SlimbenchError as e:
            return dataclasses.replace(rec, status="failed", stage="build", why=str(e),
                                       seconds=time.monotonic() - t0)
        facts = model.facts
        rec = dataclasses.replace(rec, status="screened", stage="screen",
                                  bytes_on_disk=facts.bytes_on_disk,
                                  parameters=facts.parameters,
                                  nonzero_parameters=facts.nonzero_parameters)
        over = self.ceilings(rec, path)
        if over:
            return dataclasses.replace(rec, status="rejected", stage="facts", why=over,
                                       seconds=time.monotonic() - t0)
        screens, used = [], 0
        for task in self.specs:
            crits = [q for q in self.budget.quality if q.task == task]
            base, cand = tune[task], []
            sizes = look_sizes(len(base))
            for look, n in enumerate(sizes, 1):
                cand += self.score(model, task, "tune", len(cand), n - len(cand))
                for q in list(crits):
                    options, higher = self.metrics[task][q.metric]
                    res = screen_look(base[:n], cand, self.specs[task].kind, q.metric, options,
                                      higher, q.criterion, q.allowance, q.mode, look,
                                      len(sizes), alpha=self.screening_alpha,
                                      resamples=SCREEN_RESAMPLES)
                    if res.status != "continue":
                        screens.append(Screen(task, q.metric, q.criterion, q.allowance,
                                              res.status, n, look, res.alpha_per_look,
                                              res.degradation, tuple(res.ci), q.mode))
                        crits.remove(q)
                if not crits or any(s.status == "fail" for s in screens):
                    break
            used += len(cand)
            failed = [s for s in screens if s.status == "fail"]
            if failed:
                s = failed[0]
                lo, hi = s.degradation_ci
                return dataclasses.replace(
                    rec, status="rejected", stage="screen", screening=screens,
                    tune_examples=used, seconds=time.monotonic() - t0,
                    why=(f"{s.task}.{s.metric}: degradation {s.degradation:+.4g} "
                         f"[{lo:+.4g}, {hi:+.4g}] against the allowance {s.allowance:g} "
                         f"after {s.examples} of {len(tune[s.task])} tune examples"))
        return dataclasses.replace(rec, screening=screens, tune_examples=used,
                                   seconds=time.monotonic() - t0)

    def measure(self, rec: Candidate, path: str, ab_seconds: tuple[float, float]
                ) -> Speed | None:
        """Stage 4's measurement: the objective against the baseline, as a paired
        interleaved A/B (``bench/measure/paired.py``, as ``slimbench compare``) with
        ``ab_seconds`` = (least, most) seconds; for size and memory, one exact figure each
        (None where it is not known)."""
        from slimbench.bench.measure.paired import PairedConfig, paired_compare

        scenario, metric = OBJECTIVES[self.objective]
        if scenario is None:
            mine, theirs = ((rec.bytes_on_disk, self.base.bytes_on_disk)
                            if metric == "model_bytes_on_disk"
                            else (self.peak_rss(path), self.peak_rss(self.model)))
            return Speed(metric, theirs / mine, None, 0) if mine and theirs else None
        low, high = ab_seconds
        res = paired_compare(self.model, path, PairedConfig(
            scenario=scenario, device=self.device, threads=self.threads,
            min_seconds=low, max_seconds=high))
        return Speed(metric, res.speedup, tuple(res.speedup_ci95), res.pairs,
                     list(res.warnings))


def task_metrics(budget: Budget) -> tuple[dict[str, Any], dict[str, dict]]:
    """The budget's task specs and, per task, each metric's options and direction (for
    lm-eval, read from lm-eval's task), with every criterion's metric checked (one
    UsageError) before any work."""
    from slimbench.reports.consistency import metric_options

    specs = {task: budget.task_spec(task) for task in budget.tasks}
    metrics = {}
    for task, spec in specs.items():
        if spec.kind == "lm_eval":
            from slimbench.tasks.lmeval_bridge import metric_entries

            found = metric_entries(spec)
            if list(found) != [task]:  # a group or tag: its leaf tasks are what is scored
                raise UsageError(f"{budget.source}: lm-eval {task} is a group of "
                                 f"{', '.join(found)}: name the tasks themselves")
            entries = list(found[task].values())
        else:
            entries = spec.to_dict()["metric_list"]
        options = metric_options({"metric_list": entries})
        metrics[task] = {e["metric"]: (options.get(e["metric"], {}), bool(e["higher_is_better"]))
                         for e in entries}
    for q in budget.quality:
        if q.metric not in metrics[q.task]:
            raise UsageError(f"{budget.source}: {q.key}: task {q.task} has no metric "
                             f"{q.metric!r} (its metrics: {', '.join(metrics[q.task])})")
    return specs, metrics

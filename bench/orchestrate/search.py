"""``slimbench search``: the fastest (or smallest) recipe whose quality stays inside a budget,
confirmed on examples it was never chosen on.

Each candidate of the space goes through stages that cost more and more, and stops at the
first it fails:

1. build, through the content-addressed cache (a shared prefix, one export or one pruned model,
   is built once; a resumed search builds nothing again);
2. free facts: bytes on disk and parameter counts against the budget's ceilings;
3. screening on *tune* (``tasks/splits.py``): per budget criterion, a sequential paired test
   against the baseline on growing prefixes of the tune examples (``tasks/sequential.py``), so
   a candidate that clearly breaks quality is stopped after a first look;
4. the objective, for the survivors no other survivor dominates on every measured axis
   (quality per criterion, bytes): an interleaved paired A/B against the uncompressed model
   (``bench/measure/paired.py``, as ``slimbench compare``), so the ranking holds on a shared
   host; for ``size``, the bytes themselves;
5. confirmation on *test*, best objective first: the budget's paired tests at ``alpha`` on
   examples no screening looked at. The first candidate that passes is the answer; one that
   fails there is reported as such, and the next is confirmed.

Quality is scored in this process on one runtime per candidate; latency in the A/B's own
worker processes. Every decision is saved as it is made (``search_state.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any

from slimbench.bench.orchestrate.search_budget import Budget
from slimbench.bench.orchestrate.search_space import SpaceCandidate
from slimbench.bench.orchestrate.search_state import SearchState
from slimbench.errors import SlimbenchError, UsageError
from slimbench.schema.search import Candidate, Screen, SearchResult, Speed, Step

log = logging.getLogger(__name__)

# objective -> (A/B scenario, metric); size and memory are not timed
OBJECTIVES: dict[str, tuple[str | None, str]] = {
    "decode": ("decode", "decode_ms_per_token"), "prefill": ("prefill", "prefill_ms"),
    "generate": ("generate", "generate_ms"), "size": (None, "model_bytes_on_disk"),
    "memory": (None, "peak_rss_bytes"),
}
# the share of --max-minutes after which no new candidate is screened (the rest is for
# timing the survivors and confirming) and after which no new survivor is timed
SCREEN_SHARE, TIME_SHARE = 0.6, 0.85
# the sequential screen's bootstrap: a look's interval at 1 - 0.05/4 has 0.625% in each tail,
# 12 resamples of 2000 (400 would leave 2.5: too few for a stable percentile)
SCREEN_RESAMPLES = 2000
MAX_CONFIRMATIONS = 3  # each at alpha / 3: the chance of a false "meets the budget" <= alpha
# ceilings a search checks: the artifact's own figures, and a peak measured in a process
CEILINGS = {"model_bytes_on_disk": "bytes_on_disk", "parameters": "parameters",
            "nonzero_parameters": "nonzero_parameters", "peak_rss_bytes": None}


@dataclasses.dataclass
class SearchConfig:
    """One search, as asked.

    Attributes:
        model: the model spec searched (``reference``, a folder, a hub id).
        budget: the quality criteria, ceilings and minimum speedup.
        candidates: the space, expanded and checked.
        space: where the candidates came from (a file, or default-<device>).
        out: the output folder.
        objective: decode, prefill, generate, size (bytes on disk) or memory (peak RSS).
        device: cpu or cuda.
        threads: intra-op threads of every measurement (None: all cores).
        max_minutes: the time budget (None: none); screening stops at 60% of it, timing at
            85% (an A/B that starts runs its minimum, and stops at the budget's end past
            that); the first confirmation always runs, a further one only inside the budget.
        alpha: the confirmation's overall level (each test at alpha / MAX_CONFIRMATIONS).
        screening_alpha: the sequential screens' overall level.
        tune_limit: tune examples per task at most (None: every one).
        test_limit: test examples per task at most (None: every one).
        ab_seconds: the paired A/B's (min, max) seconds per survivor.
        cache: the artifact cache (default: OUT/../.artifacts, as ``slimbench run``).
        resume: go on with the search already in ``out`` (which must have asked the same).
    """

    model: str
    budget: Budget
    candidates: list[SpaceCandidate]
    space: str
    out: Path
    objective: str = "decode"
    device: str = "cpu"
    threads: int | None = None
    max_minutes: float | None = None
    alpha: float = 0.05
    screening_alpha: float = 0.05
    tune_limit: int | None = None
    test_limit: int | None = None
    ab_seconds: tuple[float, float] = (3.0, 10.0)
    cache: Path | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UsageError(f"unknown objective {self.objective!r}; known: "
                             f"{', '.join(OBJECTIVES)}")
        for name, a in (("alpha", self.alpha), ("screening alpha", self.screening_alpha)):
            if not 0 < a < 0.5:
                raise UsageError(f"{name} must be in (0, 0.5), got {a}")
        if self.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise UsageError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise UsageError(f"--max-minutes must be positive, got {self.max_minutes}")
        metric = OBJECTIVES[self.objective][1]
        b = self.budget
        for latency in ([b.speedup_metric] if b.speedup_metric else []) + list(b.max_slowdown):
            if latency != metric:
                raise UsageError(f"{b.source}: {latency} is not the objective's metric "
                                 f"({metric}, --objective {self.objective}): a search times "
                                 "only its objective")
        for c in b.ceilings:
            if c.field not in CEILINGS:
                raise UsageError(f"{b.source}: a search holds {', '.join(CEILINGS)} to a "
                                 f"ceiling, not {c.metric}")

    def asked(self) -> dict[str, Any]:
        """What a resume must ask again (everything that changes a decision)."""
        return {"model": self.model, "device": self.device, "threads": self.threads,
                "objective": self.objective, "budget": self.budget.to_dict(),
                "alpha": self.alpha, "screening_alpha": self.screening_alpha,
                "tune_limit": self.tune_limit, "test_limit": self.test_limit,
                "ab_seconds": list(self.ab_seconds),
                "candidates": [[c.name, [[s, p] for s, p in c.steps]] for c in self.candidates]}


def recipe_text(steps) -> str:
    return " -> ".join(s if not p else f"{s}({', '.join(f'{k}={v}' for k, v in p.items())})"
                       for s, p in steps)


class _Clock:
    """The time budget: how far into --max-minutes the search is."""

    def __init__(self, max_minutes: float | None) -> None:
        self.t0, self.limit = time.monotonic(), (max_minutes * 60 if max_minutes else None)

    def seconds(self) -> float:
        return time.monotonic() - self.t0

    def past(self, share: float) -> bool:
        return self.limit is not None and self.seconds() > share * self.limit

    def cap(self, seconds: float, floor: float) -> float:
        """``seconds``, cut to what is left of the budget, never under ``floor``."""
        if self.limit is None:
            return seconds
        return max(floor, min(seconds, self.limit - self.seconds()))


def _record(c: SpaceCandidate, **fields) -> Candidate:
    base = {"content_key": None, "status": "not_reached", "stage": None, "why": ""}
    return Candidate(name=c.name, steps=[Step(s, dict(p)) for s, p in c.steps],
                     **(base | fields))


def _excess(degradation: float, allowance: float) -> float:
    """How far beyond its allowance a degradation is, as a share of the allowance (<= 0:
    within it), so that screens (relative) and confirmations (metric units) rank together."""
    if allowance > 0:
        return (degradation - allowance) / allowance
    return float("inf") if degradation > 0 else degradation


def _worst_miss(c: Candidate) -> tuple[float, str]:
    """How far the candidate's quality evidence is from the budget (the largest excess of a
    degradation over its allowance, screening or confirmation), and in words; a candidate
    whose quality was inside it missed by its reason (latency, a ceiling)."""
    worst, words = float("-inf"), ""
    for s in c.screening:
        if _excess(s.degradation, s.allowance) > worst:
            worst = _excess(s.degradation, s.allowance)
            words = (f"{s.task}.{s.metric} {s.degradation:+.4g} on {s.examples} tune examples "
                     f"vs allowance {s.allowance:.4g}")
    for t in c.confirmation:
        if _excess(t.degradation, t.allowance) > worst:
            worst = _excess(t.degradation, t.allowance)
            words = (f"{t.metric} {t.degradation:+.4g} on {t.n} test examples vs allowance "
                     f"{t.allowance:.4g}")
    return worst, words if worst > 0 or not c.why else c.why


def _dominates(a: Candidate, b: Candidate) -> bool:
    """``a`` at least as good as ``b`` on every measured axis (each criterion's degradation,
    bytes on disk) and better on one."""
    da = {(s.task, s.metric): s.degradation for s in a.screening}
    db = {(s.task, s.metric): s.degradation for s in b.screening}
    if set(da) != set(db) or a.bytes_on_disk is None or b.bytes_on_disk is None:
        return False
    axes = [(da[k], db[k]) for k in da] + [(a.bytes_on_disk, b.bytes_on_disk)]
    return all(x <= y for x, y in axes) and any(x < y for x, y in axes)


def closest(candidates: list[Candidate], k: int = 3) -> list[str]:
    """With no winner: the ``k`` candidates whose evidence came nearest the budget, each with
    what it missed by."""
    measured = [(_worst_miss(c), c) for c in candidates if c.screening or c.confirmation]
    measured.sort(key=lambda x: x[0][0])
    return [f"{c.name} ({recipe_text((s.name, s.params) for s in c.steps)}): {c.status} at "
            f"{c.stage}; {words or c.why}" for (_, words), c in measured[:k]]


@dataclasses.dataclass
class _Loaded:
    """One model loaded for scoring: its runtime, tokenizer and facts."""

    runtime: Any
    tokenizer: Any
    bytes_on_disk: int | None
    parameters: int
    nonzero_parameters: int


class Search:
    """One run of the stages over the space (module docstring)."""

    def __init__(self, cfg: SearchConfig, say=print) -> None:
        from slimbench.bench.measure import environment
        from slimbench.compress.cache import ArtifactCache

        self.cfg, self.say = cfg, say
        self.specs = {task: cfg.budget.task_spec(task) for task in cfg.budget.tasks}
        self.metrics = {task: self._metrics(task) for task in self.specs}
        for q in cfg.budget.quality:
            if q.metric not in self.metrics[q.task]:
                raise UsageError(f"{cfg.budget.source}: {q.key}: task {q.task} has no metric "
                                 f"{q.metric!r} (its metrics: "
                                 f"{', '.join(self.metrics[q.task])})")
        self.state = SearchState(cfg.out, cfg.asked(), resume=cfg.resume)
        self.cache = ArtifactCache(cfg.cache or cfg.out.parent / ".artifacts", say)
        self.threads = environment.set_threads(cfg.threads)
        self.clock = _Clock(cfg.max_minutes)
        self.base_path = cfg.model
        self.base: _Loaded | None = None
        self._base_examples: dict[str, list[dict[str, Any]]] = {}
        self._peak: dict[str, int | None] = {}

    # -- models and examples -------------------------------------------------------------

    def load(self, spec: str) -> _Loaded:
        from slimbench.bench.measure.cell import scoring_runtime

        loaded, runtime = scoring_runtime(spec, self.cfg.device, self.threads)
        info = loaded.info
        return _Loaded(runtime, loaded.tokenizer, info.bytes_on_disk, info.parameters,
                       info.nonzero_parameters)

    def score(self, model: _Loaded, task: str, split: str, offset: int = 0,
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

    def limit(self, split: str) -> int | None:
        return self.cfg.tune_limit if split == "tune" else self.cfg.test_limit

    def baseline_examples(self, split: str) -> dict[str, list[dict[str, Any]]]:
        """The baseline's records on every budget task's ``split`` rows (scored once, saved):
        test rows only when the first confirmation needs them."""
        saved = self.state.examples("baseline", split)
        if saved is None:
            self.base = self.base or self.load(self.base_path)
            saved = [r for task in self.specs
                     for r in self.score(self.base, task, split, 0, self.limit(split))]
            self.state.save_examples("baseline", split, saved)
        return {task: [r for r in saved if r["task"] == task] for task in self.specs}

    def baseline_facts(self) -> _Loaded:
        self.base = self.base or self.load(self.base_path)
        return self.base

    def _metrics(self, task: str) -> dict[str, tuple[dict[str, Any], bool]]:
        """Each metric of ``task``: its options (as the task's metric_list gives them: for
        lm-eval, its aggregation, from lm-eval's task) and direction."""
        from slimbench.reports.consistency import metric_options

        spec = self.specs[task]
        if spec.kind == "lm_eval":
            from slimbench.tasks.lmeval_bridge import metric_entries

            found = metric_entries(spec)
            if list(found) != [task]:  # a group or tag: its leaf tasks are what is scored
                raise UsageError(f"{self.cfg.budget.source}: lm-eval {task} is a group of "
                                 f"{', '.join(found)}: name the tasks themselves")
            entries = list(found[task].values())
        else:
            entries = spec.to_dict()["metric_list"]
        options = metric_options({"metric_list": entries})
        return {e["metric"]: (options.get(e["metric"], {}), bool(e["higher_is_better"]))
                for e in entries}

    def metric_info(self, task: str, metric: str) -> tuple[dict[str, Any], bool]:
        """A budget metric's options and direction (``_metrics``)."""
        return self.metrics[task][metric]

    # -- stages --------------------------------------------------------------------------

    def build(self, c: SpaceCandidate) -> tuple[str | None, str | Exception]:
        """The candidate's content key and its artifact path, or what failed building it."""
        key = None
        try:
            key = self.cache.key(self.cfg.model, list(c.steps))
            return key, self.cache.build(self.cfg.model, list(c.steps), c.name)
        except SlimbenchError as e:
            return key, e
        except Exception as e:  # noqa: BLE001 - one step's library error fails one candidate
            return key, RuntimeError(f"{type(e).__name__}: {e}")

    def ceilings(self, rec: Candidate, path: str) -> str | None:
        """Why the candidate is over a ceiling of the budget, or None."""
        base = self.baseline_facts()
        for ceiling in self.cfg.budget.ceilings:
            attr = CEILINGS[ceiling.field]
            if attr is None:
                mine, theirs = self.peak_rss(path), self.peak_rss(self.cfg.model)
            else:
                mine, theirs = getattr(rec, attr), getattr(base, attr)
            if mine is None or not theirs:
                return f"{ceiling.metric}: not known for this artifact or the baseline"
            if mine / theirs > ceiling.ratio:
                return (f"{ceiling.metric} {mine / theirs:.3f} x the baseline's, over the "
                        f"ceiling {ceiling.ratio:g}")
        return None

    def screen(self, c: SpaceCandidate, tune: dict[str, list[dict[str, Any]]]) -> Candidate:
        """Build, facts, and the sequential screens on tune (stages 1-3)."""
        from slimbench.tasks.sequential import look_sizes, screen_look

        t0 = time.monotonic()
        key, path = self.build(c)
        if isinstance(path, Exception):
            return _record(c, content_key=key, status="failed", stage="build",
                           why=str(path).splitlines()[0] if str(path) else type(path).__name__,
                           seconds=time.monotonic() - t0)
        try:
            model = self.load(path)
        except SlimbenchError as e:
            return _record(c, content_key=key, status="failed", stage="build", why=str(e),
                           seconds=time.monotonic() - t0)
        rec = _record(c, content_key=key, status="screened", stage="screen",
                      bytes_on_disk=model.bytes_on_disk, parameters=model.parameters,
                      nonzero_parameters=model.nonzero_parameters)
        over = self.ceilings(rec, path)
        if over:
            return dataclasses.replace(rec, status="rejected", stage="facts", why=over,
                                       seconds=time.monotonic() - t0)
        screens, used = [], 0
        for task in self.specs:
            crits = [q for q in self.cfg.budget.quality if q.task == task]
            base, cand = tune[task], []
            sizes = look_sizes(len(base))
            for look, n in enumerate(sizes, 1):
                cand += self.score(model, task, "tune", len(cand), n - len(cand))
                for q in list(crits):
                    options, higher = self.metric_info(task, q.metric)
                    res = screen_look(base[:n], cand, self.specs[task].kind, q.metric, options,
                                      higher, q.criterion, q.allowance, q.mode, look,
                                      len(sizes), alpha=self.cfg.screening_alpha,
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

    def peak_rss(self, spec: str) -> int | None:
        """Peak resident memory of a process that loads ``spec`` and decodes a few tokens
        (the cell function, in its own process, as a suite cell measures it)."""
        from slimbench.bench.measure.isolation import run_isolated
        from slimbench.bench.orchestrate.runner import CELL, cell_preload

        if spec not in self._peak:
            run = run_isolated(CELL, {
                "artifact": spec, "device": self.cfg.device, "threads": self.threads,
                "latency": {"prefill": [32], "decode_contexts": [], "new_tokens": 4,
                            "generate_prompt": 0, "repeats": 1, "min_seconds": 0.0},
                "tasks": [], "task_limit": None, "quality": False},
                preload=cell_preload(self.cfg.device))
            if run.status != "ok":
                raise SlimbenchError(f"peak memory of {spec}: {run.reason}")
            self._peak[spec] = run.result.result.memory.peak_rss_bytes
        return self._peak[spec]

    def rebuilt(self, rec: Candidate) -> str:
        """The screened candidate's artifact, from the cache; the very artifact that was
        screened (a slimbench that builds it differently now gives another key: refused)."""
        key, path = self.build(SpaceCandidate(rec.name, tuple((s.name, s.params)
                                                             for s in rec.steps)))
        if isinstance(path, Exception):
            raise path
        if key != rec.content_key:
            raise SlimbenchError(f"its artifact is no longer the one screened (content key "
                                 f"{key} != {rec.content_key}): start a new search")
        return path

    def objective(self, rec: Candidate) -> Candidate:
        """Stage 4: the objective against the baseline; a candidate short of the budget's
        minimum speedup (the low end of its interval) is rejected here."""
        from slimbench.bench.measure.paired import PairedConfig, paired_compare

        t0 = time.monotonic()
        scenario, metric = OBJECTIVES[self.cfg.objective]
        path = self.rebuilt(rec)
        if scenario is None:  # exact figures, no interval: bytes, or one peak each
            mine, theirs = ((rec.bytes_on_disk, self.baseline_facts().bytes_on_disk)
                            if metric == "model_bytes_on_disk"
                            else (self.peak_rss(path), self.peak_rss(self.cfg.model)))
            if not mine or not theirs:
                return dataclasses.replace(rec, status="failed", stage="latency",
                                           why=f"{metric}: not measured")
            speed = Speed(metric, theirs / mine, None, 0)
        else:
            low, high = self.cfg.ab_seconds
            res = paired_compare(self.cfg.model, path, PairedConfig(
                scenario=scenario, device=self.cfg.device, threads=self.threads,
                min_seconds=low, max_seconds=self.clock.cap(high, low)))
            speed = Speed(metric, res.speedup, tuple(res.speedup_ci95), res.pairs,
                          list(res.warnings))
        rec = dataclasses.replace(rec, stage="latency", speed=speed,
                                  seconds=rec.seconds + time.monotonic() - t0)
        budget = self.cfg.budget
        low_end = speed.ci95[0] if speed.ci95 else speed.speedup
        if budget.min_speedup is not None and low_end < budget.min_speedup:
            return dataclasses.replace(rec, status="rejected", why=(
                f"{metric}: speedup {speed.speedup:.3f} (low end {low_end:.3f}) under the "
                f"budget's minimum {budget.min_speedup:g}"))
        slowdown = budget.max_slowdown.get(metric)
        if budget.min_speedup is None and slowdown is None and speed.speedup <= 1:
            # a compressed model no better than the original at the objective is not an
            # answer unless the budget says a slowdown is fine (slowdown_at_most)
            return dataclasses.replace(rec, status="rejected", why=(
                f"{metric}: speedup {speed.speedup:.3f}, no better than the baseline"))
        if slowdown is not None and 1 / low_end > 1 + slowdown:
            return dataclasses.replace(rec, status="rejected", why=(
                f"{metric}: up to {1 / low_end:.3f} x the baseline's time, over the budget's "
                f"slowdown_at_most {slowdown:g}"))
        return rec

    def confirm(self, rec: Candidate, test: dict[str, list[dict[str, Any]]]) -> Candidate:
        """Stage 5: the budget's paired tests on test, at ``alpha``."""
        from slimbench.tasks.paired import paired_test

        t0 = time.monotonic()
        path = self.rebuilt(rec)
        model, tests = self.load(path), []
        for task in self.specs:
            cand = self.score(model, task, "test", 0, self.limit("test"))
            for q in (q for q in self.cfg.budget.quality if q.task == task):
                options, higher = self.metric_info(task, q.metric)
                tests.append(paired_test(test[task], cand, self.specs[task].kind, q.metric,
                                         options, higher, q.test, q.mode, q.allowance,
                                         level=1 - self.cfg.alpha / MAX_CONFIRMATIONS))
        failed = [t for t in tests if t.status == "fail"]
        return dataclasses.replace(
            rec, status="not_confirmed" if failed else "winner", stage="confirm",
            confirmation=tests, why=failed[0].why if failed else "",
            seconds=rec.seconds + time.monotonic() - t0)

    # -- the whole search ----------------------------------------------------------------

    def progress(self, rec: Candidate) -> None:
        """One line per candidate and stage: what it did, and why it stopped."""
        recipe = recipe_text((s.name, s.params) for s in rec.steps)
        what = {("screened", "screen"): "passed screening", ("screened", "latency"): "timed",
                ("rejected", "latency"): "timed, rejected"}.get((rec.status, rec.stage),
                                                                 f"{rec.status} at {rec.stage}")
        screened = ", ".join(f"{s.task}.{s.metric} {s.status} after {s.examples}"
                             for s in rec.screening)
        speed = ""
        if rec.speed:
            ci = (f" [{rec.speed.ci95[0]:.2f}, {rec.speed.ci95[1]:.2f}]" if rec.speed.ci95
                  else "")
            speed = (f"; {rec.speed.metric} speedup x{rec.speed.speedup:.2f}{ci}"
                     + (f" (doubtful: {rec.speed.warnings[0]})" if rec.speed.warnings else ""))
        self.say(f"[{self.clock.seconds():5.0f}s] {rec.name} {recipe}: {what}"
                 f"{' (' + screened + ')' if screened else ''}{speed}"
                 f"{': ' + rec.why if rec.why else ''}")

    def stage(self, rec: Candidate, work, stage: str) -> Candidate:
        """``work(rec)``, or ``rec`` failed at ``stage`` with the reason: one candidate's
        error (a runtime that will not load, a worker that died) ends that candidate, never
        the search, and is saved, so a resume does not meet it again."""
        try:
            out = work(rec)
        except Exception as e:  # noqa: BLE001 - any error of one candidate is its own
            log.debug("candidate %s failed at %s", rec.name, stage, exc_info=True)
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            out = dataclasses.replace(rec, status="failed", stage=stage, why=(
                why if isinstance(e, SlimbenchError) else f"{type(e).__name__}: {why}"))
        self.state.save(out)
        self.progress(out)
        return out

    def run(self) -> SearchResult:
        from slimbench.bench.measure import environment

        cfg, records = self.cfg, {}
        self.say(f"search: {len(cfg.candidates)} candidates of {cfg.space} on {cfg.model}, "
                 f"objective {cfg.objective}, budget "
                 f"{', '.join(q.describe() for q in cfg.budget.quality)}"
                 + (f", at most {cfg.max_minutes:g} minutes" if cfg.max_minutes else ""))
        tune = self.baseline_examples("tune")
        for c in cfg.candidates:  # stages 1-3, each candidate saved as it is decided
            saved = self.state.candidate(c.name)
            if saved is not None:
                records[c.name] = saved
            elif self.clock.past(SCREEN_SHARE):
                records[c.name] = _record(c, why="not screened: the time budget ran out")
            else:
                records[c.name] = self.stage(_record(c), lambda r, c=c: self.screen(c, tune),
                                             "screen")
        # survivors that another survivor matches or beats on every measured axis (quality,
        # bytes) are timed last, only if time is left: the undominated ones first
        alive = [r for r in records.values() if r.status in ("screened", "dominated")]
        order = sorted(alive, key=lambda r: any(_dominates(o, r) for o in alive))
        for r in order:
            if r.speed is not None or r.status == "failed":
                continue
            dominated = next((o.name for o in alive if _dominates(o, r)), None)
            if self.clock.past(TIME_SHARE) or (dominated and cfg.objective == "size"):
                if dominated:
                    records[r.name] = dataclasses.replace(r, status="dominated", why=(
                        f"{dominated} is as good or better on quality and bytes; not timed"))
                    self.state.save(records[r.name])
                    self.progress(records[r.name])
                continue
            records[r.name] = self.stage(dataclasses.replace(r, status="screened"),
                                         self.objective, "latency")
        winner, confirmed = self.confirm_best(records)
        for name, r in records.items():  # passed screening, never timed
            if r.status == "screened" and r.speed is None:
                records[name] = dataclasses.replace(
                    r, status="not_reached", why="passed screening; not timed: the time "
                    "budget ran out")
        result = list(records.values())
        return SearchResult(
            model=cfg.model, device=cfg.device, threads=self.threads,
            objective=cfg.objective, budget=cfg.budget.to_dict(), space=cfg.space,
            alpha=cfg.alpha, screening_alpha=cfg.screening_alpha, candidates=result,
            tried=sum(r.status != "not_reached" for r in result), confirmed=confirmed,
            winner=winner, closest=[] if winner else closest(result),
            seconds=self.clock.seconds(), environment=environment.capture().to_dict(),
            max_confirmations=MAX_CONFIRMATIONS,
            baseline_bytes_on_disk=self.baseline_facts().bytes_on_disk)

    def confirm_best(self, records: dict[str, Candidate]) -> tuple[str | None, list[str]]:
        """Stage 5 over the timed candidates, best objective first, until one passes or
        ``MAX_CONFIRMATIONS`` were made (each at alpha / MAX_CONFIRMATIONS, so that trying
        several on the same test examples keeps the chance of a false pass within alpha).
        A confirmation saved by an earlier run is reused, never redone."""
        ranked = sorted((r for r in records.values() if r.speed is not None
                         and r.status in ("screened", "winner", "not_confirmed")),
                        key=lambda r: (-r.speed.speedup, r.bytes_on_disk or 0))
        winner, confirmed, test = None, [], None
        for r in ranked:
            # the first confirmation always runs; another only inside the time budget
            late = bool(confirmed) and self.clock.past(1.0)
            if winner is None and len(confirmed) < MAX_CONFIRMATIONS and not late:
                if not r.confirmation:
                    test = test or self.baseline_examples("test")
                    records[r.name] = self.stage(r, lambda x, t=test: self.confirm(x, t),
                                                 "confirm")
                confirmed.append(r.name)
                passed = all(t.status == "pass" for t in records[r.name].confirmation)
                if records[r.name].status != "failed":
                    records[r.name] = dataclasses.replace(
                        records[r.name], status="winner" if passed else "not_confirmed")
                    winner = r.name if passed else None
            elif r.status == "winner":  # a resumed search found a better one first
                records[r.name] = dataclasses.replace(r, status="screened", why=(
                    f"confirmed, but {winner} is better at the objective"))
        return winner, confirmed


def run_search(cfg: SearchConfig, say=print) -> SearchResult:
    """Run the search and write its outputs (``search_outputs.py``)."""
    from slimbench.bench.orchestrate.search_outputs import write_outputs

    result = Search(cfg, say).run()
    write_outputs(cfg.out, result, cfg.budget.to_acceptance(), cfg.budget.suite_tasks,
                  cfg.model, cfg.device, cfg.threads)
    return result


def search_config(args) -> SearchConfig:
    """``slimbench search``'s arguments as a ``SearchConfig``: the budget and the space read
    and checked (every candidate's chain) before anything is built."""
    from slimbench.bench.orchestrate.search_budget import load_budget
    from slimbench.bench.orchestrate.search_space import default_space, load_space

    budget = load_budget(args.budget)
    if args.space is not None:
        candidates, space = load_space(args.space, args.model), str(args.space)
    else:
        device = "cuda" if args.device.startswith("cuda") else "cpu"
        candidates, space = default_space(args.device, args.model), f"default-{device}"
    if not args.ab_seconds > 0:
        raise UsageError(f"--ab-seconds must be positive, got {args.ab_seconds}")
    for name in ("tune_limit", "test_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    return SearchConfig(model=args.model, budget=budget, candidates=candidates, space=space,
                        out=args.out, objective=args.objective, device=args.device,
                        threads=args.threads, max_minutes=args.max_minutes,
                        alpha=args.alpha, tune_limit=args.tune_limit,
                        test_limit=args.test_limit, cache=args.cache, resume=args.resume,
                        ab_seconds=(min(3.0, args.ab_seconds / 3), args.ab_seconds))

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

The work on one candidate's artifact (stages 2-4) is ``search_stages.Stages``; this module
decides. Stages 1-4 run one candidate after another here (``LocalExecutor``: quality scored in
this process, latency in the A/B's own worker processes), or side by side as Ray tasks
(``search_ray.py``, ``--executor ray``); the baseline's scores and the confirmations run here
either way. Every decision is saved as it is made (``search_state.py``).
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
from slimbench.bench.orchestrate.search_stages import CEILINGS, OBJECTIVES, Facts, Loaded, Stages
from slimbench.bench.orchestrate.search_state import SearchState
from slimbench.errors import SlimbenchError, UsageError
from slimbench.schema.search import Candidate, SearchResult, Speed, Step

log = logging.getLogger(__name__)

# the share of --max-minutes after which no new candidate is screened (the rest is for
# timing the survivors and confirming) and after which no new survivor is timed
SCREEN_SHARE, TIME_SHARE = 0.6, 0.85
MAX_CONFIRMATIONS = 3  # each at alpha / 3: the chance of a false "meets the budget" <= alpha


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


class Search:
    """One run of the stages over the space (module docstring).

    ``executor`` runs stages 1-4 of many candidates: ``LocalExecutor`` (one after another,
    in this process) or ``search_ray.RaySearchExecutor`` (as Ray tasks, side by side);
    the baseline's scores and the confirmations run here either way.
    """

    def __init__(self, cfg: SearchConfig, say=print, executor=None) -> None:
        from slimbench.bench.measure import environment
        from slimbench.bench.orchestrate.search_stages import task_metrics

        self.cfg, self.say = cfg, say
        self.specs, self.metrics = task_metrics(cfg.budget)  # checked before any work
        # opened by run(), after the executor's checks, so that a refusal writes nothing
        self.state: SearchState | None = None
        self.cache: Any = None  # compress.cache.ArtifactCache
        self.threads = environment.set_threads(cfg.threads)
        self.clock = _Clock(cfg.max_minutes)
        self.executor = executor or LocalExecutor()
        self.base: Loaded | None = None
        self._stages: Stages | None = None

    # -- the baseline --------------------------------------------------------------------

    def baseline(self) -> Loaded:
        """The baseline, loaded once (for its scores and facts)."""
        if self.base is None:
            self.base = self.stages_without_facts().load(self.cfg.model)
        return self.base

    def stages_without_facts(self) -> Stages:
        cfg = self.cfg
        return Stages(cfg.model, cfg.budget, self.specs, self.metrics, cfg.device,
                      self.threads, cfg.objective, cfg.screening_alpha, cfg.tune_limit,
                      cfg.test_limit, Facts(None, 0, 0))

    def stages(self) -> Stages:
        """The per-candidate work (``search_stages.py``), with the baseline's facts."""
        if self._stages is None:
            self._stages = dataclasses.replace(self.stages_without_facts(),
                                               base=self.baseline().facts)
        return self._stages

    def baseline_examples(self, split: str) -> dict[str, list[dict[str, Any]]]:
        """The baseline's records on every budget task's ``split`` rows (scored once, saved):
        test rows only when the first confirmation needs them."""
        saved = self.state.examples("baseline", split)
        if saved is None:
            saved = self.stages().score_all(self.baseline(), split)
            self.state.save_examples("baseline", split, saved)
        return {task: [r for r in saved if r["task"] == task] for task in self.specs}

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

    def built(self, c: SpaceCandidate) -> tuple[Candidate, str | None]:
        """Stage 1: the candidate built (its record with the content key and the build's
        seconds, and its artifact's path), or its record failed at build (and None)."""
        t0 = time.monotonic()
        key, path = self.build(c)
        rec = _record(c, content_key=key, seconds=time.monotonic() - t0)
        if isinstance(path, Exception):
            return dataclasses.replace(rec, status="failed", stage="build", why=(
                str(path).splitlines()[0] if str(path) else type(path).__name__)), None
        return rec, path

    def screen(self, c: SpaceCandidate, tune: dict[str, list[dict[str, Any]]]) -> Candidate:
        """Build, facts, and the sequential screens on tune (stages 1-3), here."""
        rec, path = self.built(c)
        if path is None:
            return rec
        out = self.stages().screen(rec, path, tune)
        return dataclasses.replace(out, seconds=rec.seconds + out.seconds)

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

    def ab_seconds(self) -> tuple[float, float]:
        """The next A/B's (least, most) seconds: at most what is left of the time budget."""
        low, high = self.cfg.ab_seconds
        return low, self.clock.cap(high, low)

    def objective(self, rec: Candidate) -> Candidate:
        """Stage 4 here: the objective measured (``Stages.measure``), then judged."""
        t0 = time.monotonic()
        speed = self.stages().measure(rec, self.rebuilt(rec), self.ab_seconds())
        return self.judge(rec, speed, time.monotonic() - t0)

    def judge(self, rec: Candidate, speed: Speed | None, seconds: float) -> Candidate:
        """Stage 4's decision on a measured objective: a candidate short of the budget's
        minimum speedup (the low end of its interval) is rejected here."""
        metric = OBJECTIVES[self.cfg.objective][1]
        if speed is None:
            return dataclasses.replace(rec, status="failed", stage="latency",
                                       why=f"{metric}: not measured")
        rec = dataclasses.replace(rec, stage="latency", speed=speed,
                                  seconds=rec.seconds + seconds)
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
        stages = self.stages()
        model, tests = stages.load(path), []
        for task in self.specs:
            cand = stages.score(model, task, "test", 0, stages.limit("test"))
            for q in (q for q in self.cfg.budget.quality if q.task == task):
                options, higher = self.metrics[task][q.metric]
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
        from slimbench.compress.cache import ArtifactCache

        cfg = self.cfg
        self.state = self.state or SearchState(cfg.out, cfg.asked(), resume=cfg.resume)
        self.cache = self.cache or ArtifactCache(cfg.cache or cfg.out.parent / ".artifacts",
                                                 self.say)
        self.say(f"search: {len(cfg.candidates)} candidates of {cfg.space} on {cfg.model}, "
                 f"objective {cfg.objective}, budget "
                 f"{', '.join(q.describe() for q in cfg.budget.quality)}"
                 + (f", at most {cfg.max_minutes:g} minutes" if cfg.max_minutes else ""))
        tune = self.baseline_examples("tune")
        # stages 1-3, each candidate saved as it is decided; records in the space's order
        records = {c.name: self.state.candidate(c.name) for c in cfg.candidates}
        for rec in self.executor.screen(self, [c for c in cfg.candidates
                                               if records[c.name] is None], tune):
            records[rec.name] = rec
        # survivors that another survivor matches or beats on every measured axis (quality,
        # bytes) are timed last, only if time is left: the undominated ones first
        alive = [r for r in records.values() if r.status in ("screened", "dominated")]
        order = sorted(alive, key=lambda r: any(_dominates(o, r) for o in alive))
        untimed = [r for r in order if r.speed is None and r.status != "failed"]
        for rec in self.executor.time(self, untimed, alive):
            records[rec.name] = rec
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
            baseline_bytes_on_disk=self.baseline().facts.bytes_on_disk)

    def before_timing(self, r: Candidate, alive: list[Candidate]) -> Candidate | None:
        """None: time survivor ``r`` now. Else what it stays: untimed (the time budget ran
        out), or dominated by another survivor (saved; a size objective never times those)."""
        dominated = next((o.name for o in alive if _dominates(o, r)), None)
        if not (self.clock.past(TIME_SHARE) or (dominated and self.cfg.objective == "size")):
            return None
        if dominated:
            r = dataclasses.replace(r, status="dominated", why=(
                f"{dominated} is as good or better on quality and bytes; not timed"))
            self.state.save(r)
            self.progress(r)
        return r

    def confirm_best(self, records: dict[str, Candidate]) -> tuple[str | None, list[str]]:
        """Stage 5 over the timed candidates, best objective first, until one passes or
        ``MAX_CONFIRMATIONS`` were made (each at alpha / MAX_CONFIRMATIONS, so that trying
        several on the same test examples keeps the chance of a false pass within alpha).
        A confirmation saved by an earlier run is reused, never redone."""
        ranked = sorted((r for r in records.values() if r.speed is not None
                         and r.status in ("screened", "winner", "not_confirmed")),
                        key=lambda r: (-_vouched(r.speed), -r.speed.speedup,
                                       r.bytes_on_disk or 0))
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


def _vouched(speed) -> float:
    """The speedup an A/B vouches for: its interval's low end (the point where it has none).
    Ranking by the point would put a measurement ruined by a busy host first (13x to 195x,
    intervals of +-1500%, were seen when torch's threads spun on an oversubscribed host)."""
    return speed.ci95[0] if speed.ci95 else speed.speedup


class LocalExecutor:
    """Stages 1-4 of the candidates one after another, in this process."""

    def prepare(self, search: Search) -> None:
        """Nothing to connect to."""

    def close(self) -> None:
        """Nothing to let go of."""

    def screen(self, search: Search, pending: list[SpaceCandidate],
               tune: dict[str, list[dict[str, Any]]]):
        """Each pending candidate's record after stages 1-3 (or untouched: past the time
        budget's share for screening)."""
        for c in pending:
            if search.clock.past(SCREEN_SHARE):
                yield _record(c, why="not screened: the time budget ran out")
            else:
                yield search.stage(_record(c), lambda r, c=c: search.screen(c, tune),
                                   "screen")

    def time(self, search: Search, untimed: list[Candidate], alive: list[Candidate]):
        """Each survivor's record after stage 4, in ``untimed``'s order."""
        for r in untimed:
            held = search.before_timing(r, alive)
            yield held if held is not None else search.stage(
                dataclasses.replace(r, status="screened"), search.objective, "latency")


def run_search(cfg: SearchConfig, say=print, executor=None) -> SearchResult:
    """Run the search (stages 1-4 on ``executor``: None runs them here) and write its
    outputs (``search_outputs.py``)."""
    from slimbench.bench.orchestrate.search_outputs import write_outputs

    search = Search(cfg, say, executor)  # the budget's tasks checked before connecting
    search.executor.prepare(search)
    try:
        result = search.run()
    finally:
        search.executor.close()
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
                        test_limit=args.test_limit, resume=args.resume,
                        cache=getattr(args, "artifact_store", None) or args.cache,
                        ab_seconds=(min(3.0, args.ab_seconds / 3), args.ab_seconds))

"""Paired, interleaved latency A/B: is the candidate faster or slower than the baseline?

Two runs made minutes apart on a shared host differ by tens of percent whatever either says
about itself. So baseline and candidate are measured *together*: each runs in its own
worker process (``paired_worker.py``), loaded once, and the parent alternates short trials
of the two, in a seeded random order per pair, one worker working while the other sleeps.
Each pair gives one ratio candidate / baseline under (nearly) the same host state, and the
estimate is the median of those ratios; drift that is slow next to a pair cancels, and the
random order cancels what is left of any first/second effect (duet benchmarking, Bulej et
al. ICPE 2020; randomized multiple interleaved trials, Abedi & Brecht ICPE 2017).

Measurement stops once ``min_seconds`` of pairs are done and the 95% interval of the ratio
is within ``±precision``, or at ``max_seconds``; ``classify`` then calls the change slower,
faster or no change against the smallest effect that matters (``min_effect``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import statistics
import time

from slimbench.bench.measure.paired_stats import (  # noqa: F401 - part of this API
    MIN_PAIRS,
    half_width,
    median_ci,
    pair_orders,
    ratio_summary,
    should_stop,
    time_ratio,
    trial_plan,
)
from slimbench.bench.measure.scenarios import SCENARIOS as LATENCY
from slimbench.errors import UsageError

log = logging.getLogger(__name__)

# what each scenario is and measures is defined once, in scenarios.SCENARIOS
SCENARIOS = tuple(LATENCY)
PRIMARY = {s: LATENCY.get(s).primary for s in SCENARIOS}
SCENARIO_OF_METRIC = {m.name: s for s in SCENARIOS for m in LATENCY.get(s).metrics}
BURN_IN_PAIRS = 1  # measured and dropped: the first switch between the workers is atypical
# Pause before each trial. An idle OpenMP team (torch) or ORT thread pool spin-waits for a
# while after its last parallel region; started at once, the next trial would share the
# cores with the previous worker's spinning threads. Randomized order cancels what remains.
GAP_SECONDS = 0.015
# Every timed trial follows a trial of the other side. A trial that follows its own side's
# runs warm (its thread pool just active, its data in cache) and is faster; with a random
# order, the first trial of a pair follows itself half the time, the second never, and on a
# busy 2-core host the second came out 7-15% slower: the ratios split into two humps (by
# order) and their median wandered between them (an A/A gave 0.944 [0.913, 0.985]). So when
# the random order would repeat a side, an unused filler trial of the other side runs first
# (0.5 per pair on average); the order stays random, which cancels drift within a pair.
ALTERNATE = True


@dataclasses.dataclass(frozen=True)
class PairedConfig:
    """How to compare.

    Args:
        scenario: prefill, decode or generate.
        length: prefill: prompt tokens; decode: context tokens; generate: prompt tokens.
        new_tokens: decode: timed single-token steps per unit; generate: tokens generated.
        device: cpu, cuda or cuda:N.
        dtype: float32, float16 or bfloat16 (None: as stored).
        threads: torch / ORT intra-op threads of each worker (None: all cores).
        min_seconds: measure pairs at least this long (wall time).
        max_seconds: and at most this long (at least ``MIN_PAIRS`` pairs always).
        precision: after ``min_seconds``, stop once the 95% interval of the ratio is within
            ``±precision`` of it (relative).
        min_effect: the smallest relative change called faster or slower.
        trial_seconds: target length of one trial (its unit count is calibrated in warm-up).
        seed: seed of the random order of each pair.
    """

    scenario: str = "decode"
    length: int = 128
    new_tokens: int = 32
    device: str = "cpu"
    dtype: str | None = None
    threads: int | None = None
    min_seconds: float = 10.0
    max_seconds: float = 60.0
    precision: float = 0.02
    min_effect: float = 0.05
    trial_seconds: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        LATENCY.get(self.scenario)  # unknown: "did you mean ...?"
        for name in ("length", "new_tokens", "seed") + (("threads",) if self.threads else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{name} must be an integer, got {value!r}")
        for name in ("min_seconds", "max_seconds", "precision", "min_effect", "trial_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                    value):
                raise UsageError(f"{name} must be a finite number, got {value!r}")
        if self.length < 1:
            raise UsageError(f"length must be >= 1, got {self.length}")
        least = 2 if self.scenario == "generate" else 1  # ttft and tpot need two tokens
        if self.new_tokens < least:
            raise UsageError(f"new_tokens must be >= {least} for {self.scenario}, got "
                             f"{self.new_tokens}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        if self.min_seconds < 0 or self.max_seconds <= 0 or self.min_seconds > self.max_seconds:
            raise UsageError(f"need 0 <= min_seconds <= max_seconds and max_seconds > 0, got "
                             f"{self.min_seconds:g} and {self.max_seconds:g}")
        if not 0 < self.precision < 1:
            raise UsageError(f"precision must be in (0, 1), got {self.precision:g}")
        if not 0 <= self.min_effect < 1:
            raise UsageError(f"min_effect must be in [0, 1), got {self.min_effect:g}")
        if not 0.001 <= self.trial_seconds <= 10:
            raise UsageError(f"trial_seconds must be in [0.001, 10], got {self.trial_seconds:g}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- the verdict ---------------------------------------------------------------------------

def classify(ratio: float, ci95: tuple[float, float], min_effect: float) -> tuple[str, str]:
    """Verdict in {"faster", "slower", "no change"} and a one-line why.

    ``slower`` needs both a change that matters (ratio > 1 + min_effect) and one that is
    there (the interval excludes 1: lo > 1); ``faster`` the mirror image (ratio below
    1 / (1 + min_effect), hi < 1), so that 5% slower and its inverse are treated alike.
    """
    lo, hi = ci95
    up, down = 1 + min_effect, 1 / (1 + min_effect)
    text = f"ratio {ratio:.3f} [{lo:.3f}, {hi:.3f}]"
    effect = f"min effect {min_effect:.0%}"
    if ratio > up and lo > 1:
        return "slower", f"{text} > {up:.3f} and the interval excludes 1; {effect}"
    if ratio < down and hi < 1:
        return "faster", f"{text} < {down:.3f} and the interval excludes 1; {effect}"
    if lo <= 1 <= hi:
        return "no change", f"{text}: the interval includes 1; {effect}"
    return "no change", (f"{text}: within [{down:.3f}, {up:.3f}], smaller than the {effect}")


# ---- the result ---------------------------------------------------------------------------

@dataclasses.dataclass
class PairedResult:
    """One paired comparison; ``to_dict()`` gives plain JSON values."""

    baseline: str
    candidate: str
    scenario: str
    metric: str
    config: dict
    pairs: int
    seconds: float
    ratios: dict
    verdict: str
    why: str
    min_effect: float
    fingerprints: dict
    warnings: list
    trials: list  # [[baseline_value, candidate_value, baseline_first], ...] of `metric`
    unit: str = "ms"
    models: dict = dataclasses.field(default_factory=dict)  # per side: backend, params, ...
    calibration: dict = dataclasses.field(default_factory=dict)  # per side: units per trial
    setup_seconds: float = 0.0  # loading and warm-up, before the pairs
    by_order: dict = dataclasses.field(default_factory=dict)  # median ratio by who ran first
    # other work on the machine: the 1-minute load average before the workers started, and
    # the cores' worth of CPU that processes other than this comparison's used during it
    host: dict = dataclasses.field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ratios[self.metric]["ratio"]

    @property
    def ci95(self) -> tuple[float, float]:
        lo, hi = self.ratios[self.metric]["ci95"]
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
        return dataclasses.asdict(self) | {
            "ratio": self.ratio, "ci95": list(self.ci95), "speedup": self.speedup,
            "speedup_ci95": list(self.speedup_ci95)}


def summarize_trials(baseline: str, candidate: str, config: PairedConfig, trials: list[dict],
              seconds: float, fingerprints: dict) -> PairedResult:
    """The result of the measured ``trials`` (``{"baseline": {metric: ms}, "candidate":
    {...}, "baseline_first": bool}`` each); no processes needed, so it is testable."""
    from slimbench.fingerprint import differences

    defn = LATENCY.get(config.scenario)
    metric = defn.primary
    ratios = {m.name: ratio_summary([t["baseline"][m.name] for t in trials],
                                    [t["candidate"][m.name] for t in trials])
              | {"unit": m.unit, "higher_is_better": m.higher_is_better}
              for m in defn.metrics}
    main = ratios[metric]
    verdict, why = classify(main["ratio"], tuple(main["ci95"]), config.min_effect)
    warnings = []
    width = half_width(main["ratio"], main["ci95"])
    if width > config.min_effect:
        warnings.append(f"the 95% interval (±{width:.1%}) is wider than the min effect "
                        f"(±{config.min_effect:.0%}): a change of that size may go undetected; "
                        "run longer (--max-seconds)")
    elif width > config.precision:
        warnings.append(f"the interval (±{width:.1%}) did not reach ±{config.precision:.0%} "
                        f"in {config.max_seconds:g} s")
    diff = differences(fingerprints.get("baseline"), fingerprints.get("candidate"))
    if diff:
        warnings.append("the two workers' environments differ: " + "; ".join(diff))
    by_order = {}
    for key, first in (("baseline_first", True), ("candidate_first", False)):
        r = [t["candidate"][metric] / t["baseline"][metric] for t in trials
             if t["baseline_first"] is first]
        by_order[key] = {"pairs": len(r), "ratio": statistics.median(r) if r else None}
    return PairedResult(
        baseline=baseline, candidate=candidate, scenario=config.scenario, metric=metric,
        config=config.to_dict(), pairs=len(trials), seconds=seconds, ratios=ratios,
        verdict=verdict, why=why, min_effect=config.min_effect, fingerprints=fingerprints,
        warnings=warnings, by_order=by_order,
        trials=[[t["baseline"][metric], t["candidate"][metric], t["baseline_first"]]
                for t in trials])


# ---- the driver -----------------------------------------------------------------------------

def paired_compare(baseline: str, candidate: str, config: PairedConfig = PairedConfig(),
                   slowdown: float = 0.0, show_progress: bool = False,
                   allow_pickle: bool = False, trust_remote_code: bool = False
                   ) -> PairedResult:
    """Measure ``candidate`` against ``baseline`` in interleaved pairs (module docstring).

    Args:
        baseline, candidate: model specs (``reference``, ``shape:gpt2``, artifact dirs, ...).
        config: what to measure and when to stop.
        slowdown: test-only: the candidate's worker busy-waits ``slowdown`` times each timed
            step's own measured time inside the timed region (each decode step, each prefill
            forward, a generation's prefill and the rest of it), so its true ratio is
            ``1 + slowdown``. Used to check that a known slowdown is found.
        show_progress: a progress bar on stderr (only on a terminal).
        allow_pickle, trust_remote_code: as for loading any model (``LoadOptions``).

    Raises:
        UsageError / ModelLoadError: a bad config, spec or length (one line).
        SlimbenchError: a worker that failed or died, with the reason.
    """
    from slimbench.bench.measure.paired_worker import (
        Worker,
        busy_warning,
        cpu_snapshot,
        other_cores,
    )
    from slimbench.compress.loader import LoadOptions

    if isinstance(slowdown, bool) or not isinstance(slowdown, int | float) or not (
            0 <= slowdown <= 100):
        raise UsageError(f"slowdown must be a number in [0, 100], got {slowdown!r}")
    LoadOptions(device=config.device, dtype=config.dtype)  # a bad device fails before any work
    options = {"scenario": config.scenario, "length": config.length,
               "new_tokens": config.new_tokens, "device": config.device,
               "dtype": config.dtype, "threads": config.threads,
               "allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t_setup = time.perf_counter()
    workers = {}
    try:
        # both load at once (their loading overlaps); measuring starts once both are ready
        workers["baseline"] = Worker("baseline", baseline, options)
        workers["candidate"] = Worker("candidate", candidate, options, slowdown)
        models = {role: w.ready() for role, w in workers.items()}
        calibration = {role: w.request("warmup", None, timeout=600)
                       for role, w in workers.items()}
        plan = trial_plan(config, calibration)
        setup_seconds = time.perf_counter() - t_setup
        pids = [os.getpid()] + [w.proc.pid for w in workers.values()]
        before = cpu_snapshot(pids)
        trials, seconds = _pairs(workers, plan, config, show_progress)
        others = other_cores(before, cpu_snapshot(pids))
    finally:  # also on Ctrl-C and errors: no worker outlives the comparison
        for w in workers.values():
            w.close()
    fingerprints = {role: m.pop("fingerprint") for role, m in models.items()}
    result = summarize_trials(baseline, candidate, config, trials, seconds, fingerprints)
    result.models, result.setup_seconds = models, setup_seconds
    result.calibration = {role: c | {"units_per_trial" if "units" in plan[role] else
                                     "steps_per_trial": next(iter(plan[role].values()))}
                          for role, c in calibration.items()}
    result.host = {"load_average_1m": load, "other_cores": others}
    busy = busy_warning(others, models["baseline"]["threads"], config.device)
    if busy:
        result.warnings.append(busy)
    return result


def _pairs(workers: dict, plan: dict, config: PairedConfig,
           show_progress: bool) -> tuple[list[dict], float]:
    """Run pairs until the stopping rule says so; returns (trials, seconds of pairs)."""
    from tqdm import tqdm

    from slimbench.log import quiet_progress

    orders = pair_orders(random.Random(config.seed))
    primary = LATENCY.get(config.scenario).primary
    # a trial may take far longer than planned on a loaded host; only a hung worker takes this
    timeout = 300 + 100 * config.trial_seconds
    trials, ratios, last = [], [], None
    bar = tqdm(total=None, unit="pair", desc="compare", disable=quiet_progress(show_progress),
               leave=False)
    start = None
    try:
        for i in range(100_000_000):
            baseline_first = next(orders)
            order = ("baseline", "candidate") if baseline_first else ("candidate", "baseline")
            if ALTERNATE and order[0] == last:
                # a filler trial of the other side, not used: see ALTERNATE
                time.sleep(GAP_SECONDS)
                workers[order[1]].request("trial", plan[order[1]] | {"filler": True}, timeout)
            values = {}
            for role in order:
                time.sleep(GAP_SECONDS)
                values[role] = workers[role].request("trial", plan[role], timeout)
            last = order[1]
            if i < BURN_IN_PAIRS:
                start = time.perf_counter()
                continue
            trials.append(values | {"baseline_first": baseline_first})
            ratios.append(values["candidate"][primary] / values["baseline"][primary])
            elapsed = time.perf_counter() - start
            if len(ratios) >= 2:
                ratio, lo, hi = median_ci(ratios)
                bar.set_postfix_str(f"ratio {ratio:.3f} [{lo:.3f}, {hi:.3f}] {elapsed:.0f} s",
                                    refresh=False)
                if len(ratios) % 25 == 0:
                    log.info("%d pairs, %.0f s: ratio %.3f [%.3f, %.3f]", len(ratios),
                             elapsed, ratio, lo, hi)
            bar.update()
            # the next pair is about as long as the mean one: stop before it would end past
            # max_seconds (a 4 s pair of a large model otherwise overshoots by up to 4 s)
            if should_stop(ratios, elapsed, config, pair_seconds=elapsed / len(ratios)):
                break
    finally:
        bar.close()
    return trials, time.perf_counter() - start


def format_result(result: PairedResult) -> str:
    """The few lines ``slimbench compare`` prints (without the warnings)."""
    lines = []
    for role in ("baseline", "candidate"):
        m = result.models.get(role) or {}
        what = ", ".join(str(x) for x in (
            m.get("backend"), m.get("device"), m.get("dtype"),
            f"{m['parameters'] / 1e6:.1f} M params" if m.get("parameters") else None,
            f"{m['threads']} threads" if m.get("threads") else None,
            "/".join(m["recipe"]) if m.get("recipe") else None) if x)
        lines.append(f"{role:<10} {getattr(result, role)}  ({what})")
    c = result.config
    what = {"prefill": f"prompt {c['length']} tokens",
            "decode": f"context {c['length']}, {c['new_tokens']} new tokens",
            "generate": f"prompt {c['length']}, {c['new_tokens']} new tokens"}[result.scenario]
    cal = [result.calibration.get(r, {}) for r in ("baseline", "candidate")]
    trial = (f"trials of {cal[0]['steps_per_trial']} of {c['new_tokens']} decode steps"
             if "steps_per_trial" in cal[0] else
             " / ".join(str(x.get("units_per_trial", "?")) for x in cal) + " units per trial")
    lines.append(f"{result.scenario}: {what}; {result.pairs} pairs in {result.seconds:.1f} s "
                 f"({trial})")
    for name, r in result.ratios.items():
        u = r.get("unit", "ms")
        lines.append(f"  {name:<20} median {r['baseline']:.3f} {u} -> {r['candidate']:.3f} {u}, "
                     f"ratio {r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    lo, hi = result.speedup_ci95
    lines.append(f"speedup {result.speedup:.3f}x [{lo:.3f}, {hi:.3f}]")
    lines.append(result.verdict_line)
    return "\n".join(lines)

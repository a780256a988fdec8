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
import os
import random
import statistics
import time

from slimbench.bench.measure.paired_result import (  # noqa: F401 - part of this API
    PairedResult,
    format_result,
)
from slimbench.bench.measure.paired_stats import (  # noqa: F401 - part of this API
    MIN_PAIRS,
    ByOrder,
    Calibration,
    Host,
    MetricRatio,
    OrderRatio,
    PairedConfig,
    TrialPlan,
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


# ---- the result (its record and its lines: paired_result.py) --------------------------------

def _shared_packages(a: dict | None, b: dict | None) -> tuple[dict | None, dict | None]:
    """Two workers' fingerprints with the libraries both hold: each engine's worker holds its
    own engine's (``fingerprint``'s ``backend``), which is no difference of environment."""
    if not a or not b:
        return a, b
    both = set(a.get("packages") or {}) & set(b.get("packages") or {})
    return tuple(f | {"packages": {k: v for k, v in (f.get("packages") or {}).items()
                                   if k in both}} for f in (a, b))


def summarize_trials(baseline: str, candidate: str, config: PairedConfig, trials: list[dict],
              seconds: float, fingerprints: dict) -> PairedResult:
    """The result of the measured ``trials`` (``{"baseline": {metric: ms}, "candidate":
    {...}, "baseline_first": bool}`` each); no processes needed, so it is testable."""
    from slimbench.fingerprint import differences

    defn = LATENCY.get(config.scenario)
    metric = defn.primary
    ratios = {m.name: ratio_summary([t["baseline"][m.name] for t in trials],
                                    [t["candidate"][m.name] for t in trials], m.unit,
                                    m.higher_is_better)
              for m in defn.metrics}
    main = ratios[metric]
    verdict, why = classify(main.ratio, main.ci95, config.min_effect)
    warnings = []
    width = half_width(main.ratio, main.ci95)
    if width > config.min_effect:
        warnings.append(f"the 95% interval (±{width:.1%}) is wider than the min effect "
                        f"(±{config.min_effect:.0%}): a change of that size may go undetected; "
                        "run longer (--max-seconds)")
    elif width > config.precision:
        warnings.append(f"the interval (±{width:.1%}) did not reach ±{config.precision:.0%} "
                        f"in {config.max_seconds:g} s")
    diff = differences(*_shared_packages(fingerprints.get("baseline"),
                                         fingerprints.get("candidate")))
    if diff:
        warnings.append("the two workers' environments differ: " + "; ".join(diff))
    by_order = {}
    for first in (True, False):
        r = [t["candidate"][metric] / t["baseline"][metric] for t in trials
             if t["baseline_first"] is first]
        by_order[first] = OrderRatio(pairs=len(r), ratio=statistics.median(r) if r else None)
    return PairedResult(
        baseline=baseline, candidate=candidate, scenario=config.scenario, metric=metric,
        config=config, pairs=len(trials), seconds=seconds, ratios=ratios,
        verdict=verdict, why=why, min_effect=config.min_effect, fingerprints=fingerprints,
        warnings=warnings, by_order=ByOrder(baseline_first=by_order[True],
                                            candidate_first=by_order[False]),
        trials=[(t["baseline"][metric], t["candidate"][metric], t["baseline_first"])
                for t in trials])


# ---- the driver -----------------------------------------------------------------------------

DEFAULT_CONFIG = PairedConfig()


def paired_compare(baseline: str, candidate: str, config: PairedConfig = DEFAULT_CONFIG,
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
        ready = {role: w.ready() for role, w in workers.items()}
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
    fingerprints = {role: r.fingerprint for role, r in ready.items()}
    result = summarize_trials(baseline, candidate, config, trials, seconds, fingerprints)
    result.models = {role: r.model for role, r in ready.items()}
    result.setup_seconds = setup_seconds
    result.calibration = {role: dataclasses.replace(c, units_per_trial=plan[role].units,
                                                    steps_per_trial=plan[role].steps)
                          for role, c in calibration.items()}
    result.host = Host(load_average_1m=load, other_cores=others)
    busy = busy_warning(others, result.models["baseline"].threads, config.device)
    if busy:
        result.warnings.append(busy)
    return result


def _pairs(workers: dict, plan: dict[str, TrialPlan], config: PairedConfig,
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
                workers[order[1]].request("trial", dataclasses.replace(plan[order[1]],
                                                                       filler=True), timeout)
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

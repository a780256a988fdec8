"""Paired quality tests: a baseline and a candidate scored on the same examples.

Comparing two point values against a fixed threshold ignores sampling noise: on 20 examples a
ROUGE score's own 95% interval is ten points wide, so a candidate whose outputs differ by a few
tokens can fail a 2% gate by chance. The two sides were scored on the same examples, so the
comparison is paired: each bootstrap resample draws one set of example indices and applies it
to both sides (paired bootstrap, Koehn 2004; sacrebleu's ``paired-bs``), giving an interval of
the difference in which the between-example variance cancels out. A corpus metric
re-aggregates its per-example statistics on each resample (BLEU's n-gram counts, perplexity's
per-text NLL and token counts kept together), as in ``bootstrap.bootstrap_ci``.

Two decision rules on the interval of the degradation d (the change in the bad direction):

- ``significance``: fail only when d exceeds the allowance AND the interval of d excludes 0
  (the burden of proof is on the gate; a small n passes more).
- ``non_inferiority``: pass only when the interval's bad end is within the allowance (the
  burden of proof is on the candidate; a small n fails more).

Each decision says the smallest degradation it could detect with this n, so a pass on too few
examples reads as what it is.

The interval is two-sided at ``level`` (0.95 unless asked otherwise: ``tasks/sequential.py``
asks for 1 - alpha/looks at each interim look). The fields named ``ci95`` /
``degradation_ci95`` hold the interval at whatever level was asked for; the ``why`` names it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import statistics
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from slimbench.errors import UsageError
from slimbench.schema import Interval, PairedTest, Typed
from slimbench.tasks.scorers import CHOICE_METRICS, METRICS, PERPLEXITY_METRICS, with_defaults

TESTS = ("significance", "non_inferiority")
MODES = ("relative", "absolute")
Z_POWER = 1.96 + 0.84  # 5% two-sided, 80% power
LEVEL = 0.95  # the intervals' default two-sided confidence
_SPEC_KEYS = frozenset({"metric", "higher_is_better"})  # a task_spec metric_list entry's own


def metric_rows(examples: list[dict], kind: str, metric: str, options: dict | None = None
                ) -> tuple[np.ndarray, Callable[[np.ndarray], float]]:
    """Per-example statistics rows and the aggregate for one metric, from saved example
    records (``*.examples.jsonl``).

    Kind ``perplexity``: rows ``(nll_nats, tokens, bytes)`` per text and
    ``PERPLEXITY_METRICS[metric]``; kind ``multiple_choice``: ``CHOICE_METRICS[metric]`` of the
    records themselves (per-choice log-likelihoods); kind ``lm_eval``: each record's value of
    the metric, aggregated by lm-eval's aggregation named in ``options``; otherwise
    ``METRICS[metric].stats(predictions, references, **options)`` and its aggregate, with the
    metric's default options filled in. ``options`` may be a ``task_spec`` ``metric_list``
    entry as saved (its ``metric`` and ``higher_is_better`` keys are ignored).
    """
    # the kind, metric and options come from a saved task spec: a file a user may have edited
    for what, value, want in (("task kind", kind, str), ("metric", metric, str),
                              ("metric options", options, dict | None)):
        if not isinstance(value, want):
            raise UsageError(f"{what} must be {'text' if want is str else 'a mapping'}, "
                             f"got {value!r}")
    if kind == "lm_eval":
        rows, aggregate = _lmeval_rows(examples, metric, options or {})
        return rows, _guarded(metric, aggregate)
    registry = {"perplexity": PERPLEXITY_METRICS, "multiple_choice": CHOICE_METRICS}.get(
        kind, METRICS)
    scorer = registry.get(metric, None)
    if scorer is None:
        raise UsageError(f"unknown metric {metric!r} for a {kind} task "
                         f"(known: {', '.join(sorted(registry))})")
    opts = {k: v for k, v in dict(options or {}).items() if k not in _SPEC_KEYS}
    unknown = sorted(set(opts) - set(scorer.options))
    if unknown:
        raise UsageError(f"metric {metric}: unknown option(s) {', '.join(unknown)} "
                         f"(allowed: {', '.join(sorted(scorer.options)) or 'none'})")
    wrong = [(k, v) for k, v in opts.items() if scorer.options[k] is not None
             and type(v) is not type(scorer.options[k])]
    if wrong:
        k, v = wrong[0]
        raise UsageError(f"metric {metric}: option {k} must be "
                         f"{type(scorer.options[k]).__name__}, got {v!r}")
    opts = with_defaults(scorer, opts)
    check_records(examples, kind)
    try:
        if kind == "perplexity":
            rows = np.array([[e["nll_nats"], e["tokens"], e["bytes"]] for e in examples],
                            dtype=np.float64).reshape(len(examples), 3)
        elif kind == "multiple_choice":
            rows = scorer.stats(examples)
        else:
            rows = scorer.stats([e["prediction"] for e in examples],
                                [e["reference"] for e in examples], **opts)
    except KeyError as e:
        raise UsageError(f"metric {metric}: a {kind} example record lacks "
                         f"{e.args[0]!r}") from None
    except (TypeError, ValueError, ArithmeticError) as e:  # a library refusing an option
        raise UsageError(f"metric {metric}: cannot score the saved examples with options "
                         f"{opts} ({type(e).__name__}: {e})") from None
    return np.asarray(rows), _guarded(metric, lambda r: scorer.aggregate(r, **opts))


def _guarded(metric: str, aggregate: Callable) -> Callable[[np.ndarray], float]:
    """``aggregate`` as a float, its failures on saved data one UsageError: records that pass
    ``check_records`` can still overflow (``exp`` of a huge mean NLL), and lm-eval's own
    aggregations meet whatever values a file holds."""
    def run(rows) -> float:
        try:
            return float(aggregate(rows))
        except (TypeError, ValueError, ArithmeticError, KeyError, IndexError) as e:
            raise UsageError(f"metric {metric}: cannot aggregate the saved examples "
                             f"({type(e).__name__}: {e})") from None
    return run


# A token's NLL is -log p, at most ~104 nats for the smallest positive float32 probability and
# ~745 for float64: a text's NLL above 1000 nats per scored token is not a measurement.
MAX_NATS_PER_TOKEN = 1000.0


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)


_REQUIRED = {"perplexity": ("nll_nats", "tokens", "bytes"),
             "multiple_choice": ("loglikelihoods", "choice_chars", "reference"),
             "lm_eval": ("values",)}


def _record_problem(e: dict, kind: str) -> str | None:
    """What is wrong with one saved example record of a ``kind`` task, or None."""
    missing = [k for k in _REQUIRED.get(kind, ("prediction", "reference")) if k not in e]
    if missing:
        return f"lacks {missing[0]!r}"
    if kind == "perplexity":
        nll, tokens, n_bytes = e.get("nll_nats"), e.get("tokens"), e.get("bytes")
        if not _count(tokens):
            return f"tokens must be a whole number >= 0, got {tokens!r}"
        if not _count(n_bytes):
            return f"bytes must be a whole number >= 0, got {n_bytes!r}"
        if not (_finite(nll) and 0 <= nll <= MAX_NATS_PER_TOKEN * tokens):
            return (f"nll_nats must be a finite number in [0, {MAX_NATS_PER_TOKEN:g} x tokens "
                    f"= {MAX_NATS_PER_TOKEN * tokens:g}], got {nll!r}")
    elif kind == "multiple_choice":
        ll, chars, ref = e.get("loglikelihoods"), e.get("choice_chars"), e.get("reference")
        if not (isinstance(ll, list) and ll and all(_finite(x) for x in ll)):
            return f"loglikelihoods must be a non-empty list of finite numbers, got {ll!r}"
        if not (isinstance(chars, list) and len(chars) == len(ll)
                and all(_count(c) and c > 0 for c in chars)):
            return f"choice_chars must be {len(ll)} whole numbers > 0, got {chars!r}"
        if not (_count(ref) and ref < len(ll)):
            return f"reference must be a choice index in [0, {len(ll) - 1}], got {ref!r}"
    elif kind != "lm_eval":
        for key in ("prediction", "reference"):
            if not isinstance(e.get(key), str):
                return f"{key} must be text, got {e.get(key)!r}"
    return None


def check_records(examples: list[dict], kind: str) -> None:
    """Refuse saved example records whose figures are not measurements: wrong types, NaN or
    infinite values, negative counts, an NLL no model can produce, a reference outside the
    choices. The paired tests and the re-aggregation of a recorded figure read these files,
    which a user may have edited or truncated; without this a text such as "abc" or a NaN
    becomes a traceback or, worse, an interval of NaN that passes.

    Raises:
        UsageError: the first bad record, by id, with the field, what it must be and what it is.
    """
    for i, e in enumerate(examples):
        problem = f"is {type(e).__name__}, not a mapping" if not isinstance(e, dict) \
            else _record_problem(e, kind)
        if problem:
            name = e.get("id", f"#{i}") if isinstance(e, dict) else f"#{i}"
            raise UsageError(f"example {name!r} of a {kind} task: {problem}")
    if kind == "perplexity" and examples and sum(e["tokens"] for e in examples) == 0:
        raise UsageError("the perplexity examples score no tokens at all")


def _lmeval_rows(examples: list[dict], metric: str, options: dict
                 ) -> tuple[np.ndarray, Callable[[np.ndarray], float]]:
    """An lm-eval task's per-example values of ``metric`` (kept whole: they may be pairs) and
    lm-eval's aggregation of them (``options["aggregation"]``, as its results recorded)."""
    name = options.get("aggregation")
    if not name:
        raise UsageError(f"metric {metric}: its lm-eval aggregation is a task's own function, "
                         "which a paired test cannot rebuild")
    try:
        from slimbench.tasks.lmeval_bridge import lmeval_aggregate, object_rows
    except ImportError:
        raise UsageError(f"metric {metric}: a paired test of an lm-eval task needs the lmeval "
                         "extra (pip install 'slimbench[lmeval]')") from None
    try:
        rows = object_rows([e["values"][metric] for e in examples])
    except (KeyError, TypeError):
        raise UsageError(f"metric {metric}: an lm-eval example record lacks its value") from None
    return rows, lmeval_aggregate(name)


def _few(ids: list, k: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:k])
    return shown + (f" and {len(ids) - k} more" if len(ids) > k else "") if ids else "none"


def _by_id(examples: list[dict], side: str) -> dict:
    try:
        ids = [e["id"] for e in examples]
    except (KeyError, TypeError):
        raise UsageError(f"{side}: an example record has no id") from None
    repeated = [i for i, c in Counter(ids).items() if c > 1]
    if repeated:
        raise UsageError(f"{side}: example id(s) {_few(repeated)} repeat, so examples cannot "
                         "be paired by id (one task's records at a time)")
    return dict(zip(ids, examples, strict=True))


def pair_examples(base: list[dict], cand: list[dict]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both sides in the baseline's order, joined by example id. The records are the saved
    per-example JSON objects as they are (their keys depend on the task's kind:
    ``check_records``).

    UsageError naming a few ids when the two sets of ids differ (the comparison would not be
    paired) or when an id repeats on one side.
    """
    b, c = _by_id(base, "baseline"), _by_id(cand, "candidate")
    only_b, only_c = [i for i in b if i not in c], [i for i in c if i not in b]
    if only_b or only_c:
        raise UsageError(f"baseline and candidate were scored on different examples, so they "
                         f"cannot be paired: only in the baseline {_few(only_b)}; only in the "
                         f"candidate {_few(only_c)}")
    return list(b.values()), [c[i] for i in b]


def paired_samples(base_rows, cand_rows, aggregate: Callable[[np.ndarray], float],
                   resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The metric of each side on each resample: ``(resamples,)`` arrays, the same indices
    ``default_rng(seed).integers(0, n, (resamples, n))`` for both sides (the draw of
    ``bootstrap_ci``, and of sacrebleu's ``rng.choice`` for the same seed)."""
    base_rows, cand_rows = np.asarray(base_rows), np.asarray(cand_rows)
    n = len(base_rows)
    if n == 0 or len(cand_rows) != n:
        raise UsageError(f"paired bootstrap needs the same examples on both sides, at least one:"
                         f" got {n} baseline and {len(cand_rows)} candidate rows")
    if resamples < 1:
        raise UsageError(f"paired bootstrap needs at least 1 resample, got {resamples}")
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return (np.array([aggregate(base_rows[i]) for i in idx], dtype=np.float64),
            np.array([aggregate(cand_rows[i]) for i in idx], dtype=np.float64))


@dataclasses.dataclass(frozen=True)
class PairedBootstrap(Typed):
    """The change between two sides resampled together.

    Attributes:
        baseline: the metric over the baseline's rows.
        candidate: the metric over the candidate's rows.
        delta: candidate - baseline.
        ci95: percentile interval of the delta over the paired resamples, at the level asked
            for (95% by default).
        se: standard error of the delta over the resamples (0 for one resample).
        n: rows (examples) on each side.
        resamples: paired resamples.
        seed: the numpy generator's seed.
    """

    baseline: float
    candidate: float
    delta: float
    ci95: Interval
    se: float
    n: int
    resamples: int
    seed: int


@dataclasses.dataclass(frozen=True)
class Decision(Typed):
    """A pass or fail of a ``PairedBootstrap`` (``decide``).

    Attributes:
        status: pass or fail.
        why: the decision in words.
        test: significance or non_inferiority.
        allowance: the allowed degradation, in metric units.
        degradation: the change in the bad direction (> 0: worse).
        degradation_ci95: the interval of the degradation (at the bootstrap's level).
        detectable: the smallest degradation the test could detect with this n.
        detectable_relative: detectable / |baseline|, or null for a baseline of 0.
    """

    status: Literal["pass", "fail"]
    why: str
    test: Literal["significance", "non_inferiority"]
    allowance: float
    degradation: float
    degradation_ci95: Interval
    detectable: float
    detectable_relative: float | None


def check_level(level) -> float:
    """``level`` as a float, or a one-line UsageError unless it is a number in (0, 1)."""
    if not (_finite(level) and 0 < level < 1):
        raise UsageError(f"confidence level must be a number between 0 and 1 (e.g. 0.95), "
                         f"got {level!r}")
    return float(level)


def _tails(level: float) -> list[float]:
    """The percentiles of a two-sided interval at ``level``: [2.5, 97.5] for 0.95 exactly."""
    tail = round(50.0 * (1.0 - level), 12)
    return [tail, 100.0 - tail]


def _z_power(level: float) -> float:
    """z of the two-sided ``level`` plus z of 80% power (``Z_POWER`` at 0.95)."""
    if level == LEVEL:
        return Z_POWER
    return statistics.NormalDist().inv_cdf(0.5 + level / 2) + 0.84


def paired_bootstrap(base_rows, cand_rows, aggregate: Callable[[np.ndarray], float],
                     resamples: int = 1000, seed: int = 0, level: float = LEVEL
                     ) -> PairedBootstrap:
    """Point values, and the percentile interval (two-sided at ``level``, 95% by default; it
    is the ``ci95`` field whatever the level) and standard error of the difference
    ``candidate - baseline`` over paired resamples (the same indices for both sides)."""
    tails = _tails(check_level(level))
    b, c = paired_samples(base_rows, cand_rows, aggregate, resamples, seed)
    base_v = float(aggregate(np.asarray(base_rows)))
    cand_v = float(aggregate(np.asarray(cand_rows)))
    deltas = c - b
    lo, hi = np.percentile(deltas, tails)
    return PairedBootstrap(baseline=base_v, candidate=cand_v, delta=cand_v - base_v,
                           ci95=(float(lo), float(hi)),
                           se=float(deltas.std(ddof=1)) if resamples > 1 else 0.0,
                           n=len(np.asarray(base_rows)), resamples=resamples, seed=seed)


def _check(test: str, mode: str, allowed: float) -> None:
    if test not in TESTS:
        raise UsageError(f"unknown paired test {test!r} (one of {', '.join(TESTS)})")
    if mode not in MODES:
        raise UsageError(f"unknown allowance mode {mode!r} (one of {', '.join(MODES)})")
    if not isinstance(allowed, numbers.Real) or not math.isfinite(allowed) or allowed < 0:
        raise UsageError(f"allowed change must be a finite number >= 0, got {allowed!r}")


def decide(result: PairedBootstrap, higher_is_better: bool, test: str, mode: str,
           allowed: float, level: float = LEVEL) -> Decision:
    """Pass or fail a ``paired_bootstrap`` result.

    The degradation d is the change in the bad direction (baseline - candidate when higher is
    better, else candidate - baseline), its interval likewise. The allowance A is
    ``allowed * |baseline|`` (mode ``relative``; 0 for a baseline of 0) or ``allowed``
    (``absolute``, metric units). ``significance`` fails when d > A and the interval of d
    excludes 0; ``non_inferiority`` fails unless the interval's high end is <= A.
    ``detectable`` is the smallest degradation the test could detect with this n: about
    (1.96 + 0.84) * se for significance (80% power), the interval's half-width for
    non-inferiority. ``level`` is the level ``result``'s interval was made at (the one
    ``paired_bootstrap`` was given): the ``why`` names it and the significance test's
    ``detectable`` uses its z.
    """
    _check(test, mode, allowed)
    level = check_level(level)
    base, delta = result.baseline, result.delta
    sign = -1.0 if higher_is_better else 1.0
    d = sign * delta + 0.0  # + 0.0: no -0.0
    lo, hi = sorted(sign * x + 0.0 for x in result.ci95)
    if mode == "relative":
        allowance = float(allowed) * abs(base)
        rule = (f"{allowed:.4g} x |baseline {base:.4g}|" if base else
                "relative to a baseline of 0, so 0")
    else:
        allowance, rule = float(allowed), "absolute"
    if test == "significance":
        fail = d > allowance and lo > 0
        reason = ("beyond the allowance and significant (interval excludes 0)" if fail else
                  "within the allowance" if d <= allowance else
                  "beyond the allowance but not significant (interval includes 0)")
        detectable = _z_power(level) * result.se
    else:
        fail = not hi <= allowance
        reason = (f"interval's bad end {hi:.4g} {'>' if fail else '<='} allowance "
                  f"{allowance:.4g}")
        detectable = (result.ci95[1] - result.ci95[0]) / 2
    why = (f"{test}: {'fail' if fail else 'pass'}: change {delta:+.4g} "
           f"({base:.4g} -> {result.candidate:.4g}), degradation {d:.4g} "
           f"{100 * level:.4g}% CI [{lo:.4g}, {hi:.4g}] on {result.n} paired examples, allowance "
           f"{allowance:.4g} ({rule}): {reason}")
    return Decision(status="fail" if fail else "pass", why=why, test=test, allowance=allowance,
                    degradation=d, degradation_ci95=(lo, hi), detectable=float(detectable),
                    detectable_relative=float(detectable / abs(base)) if base else None)


def paired_test(base_examples: list[dict], cand_examples: list[dict], kind: str, metric: str,
                options: dict | None, higher_is_better: bool, test: str, mode: str,
                allowed: float, resamples: int = 1000, seed: int = 0, level: float = LEVEL
                ) -> PairedTest:
    """pair_examples -> metric_rows for each side -> paired_bootstrap -> decide: the bootstrap
    fields, the decision fields, and ``metric`` (the ``why`` starts with the metric).
    ``level``: the intervals' two-sided confidence (95% by default); ``ci95`` and
    ``degradation_ci95`` hold the interval at that level."""
    _check(test, mode, allowed)
    check_level(level)
    base, cand = pair_examples(base_examples, cand_examples)
    base_rows, aggregate = metric_rows(base, kind, metric, options)
    cand_rows, _ = metric_rows(cand, kind, metric, options)
    boot = paired_bootstrap(base_rows, cand_rows, aggregate, resamples, seed, level)
    decision = decide(boot, higher_is_better, test, mode, allowed, level)
    fields = {f.name: getattr(part, f.name) for part in (boot, decision)
              for f in dataclasses.fields(part)}
    return PairedTest(**fields | {"metric": metric, "why": f"{metric} {decision.why}"})

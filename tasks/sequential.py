"""Group-sequential paired screening: stop judging a candidate as soon as it clearly fails (or
clearly passes) its quality allowance.

A recipe search (``slimbench search``) scores each candidate on growing prefixes of the *tune*
examples (``look_sizes``: 16, 37, 86, 200 of 200, say) and, after each prefix, looks at the
paired test of the examples so far (``screen_look``). A broken candidate is stopped after the
first look, at a fraction of a full evaluation; one that is close to its allowance is scored on
everything.

Looking more than once at a growing sample and stopping at the first decisive look gives a
wrong decision more chances than one test at the end. Each look's interval is therefore made at
the two-sided level ``1 - alpha / looks`` (Bonferroni: the screening alpha spent evenly over the
planned looks). A wrong pass at look k (the interval's bad end within the allowance while the
true degradation is beyond it) has probability at most ``alpha / (2 looks)``, so by the union
bound the probability of a wrong pass at *any* look, whichever look the screen stops at, is at
most ``looks x alpha / (2 looks) = alpha / 2``: the one-sided error of a single test on a 95%
interval for ``alpha`` = 0.05. An early wrong fail (the whole interval beyond the allowance
while the truth is within it) is bounded the same way; at the last look, where the plain test
decides, a candidate whose true degradation sits just inside its allowance fails about half
the time, as it would with one test at the end. The bound takes no credit for
the looks being nested prefixes (strongly correlated), so it is conservative: the real error is
smaller, and a candidate near its allowance needs a little more evidence than a single test at
the end would ask for (O'Brien-Fleming or Pocock boundaries spend alpha more efficiently; the
even split is the simplest that is valid for any schedule and any stopping). The bootstrap's
percentile interval is itself approximate at small n and extreme levels, which is one more
reason the confirmation on *test* (``tasks/splits.py``), not the screen, decides "meets the
budget".

``best_of`` is the selection a search makes among candidates on the examples it has: its best
looks better there than it is (the more candidates, the more so), which is why the winner is
confirmed on examples no candidate was chosen on (``tests/test_selection_bias.py``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal

from slimbench.errors import UsageError
from slimbench.schema import PairedTest
from slimbench.tasks.paired import MODES, check_level, metric_rows, pair_examples, paired_test

# the suite's criterion names (acceptance criteria, budgets) -> the paired test behind each
CRITERIA = {"non_inferior": "non_inferiority", "no_significant_loss": "significance"}


def _whole(what: str, value, least: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
        raise UsageError(f"{what} must be a whole number >= {least}, got {value!r}")
    return value


def look_sizes(total: int, first: int = 16, looks: int = 4) -> list[int]:
    """The examples scored by each interim look: a geometric schedule from ``first`` to
    ``total``, increasing, without repeats, ending at ``total`` (so it may have fewer than
    ``looks`` entries; pass ``len()`` of it as ``screen_look``'s ``looks``).

    ``look_sizes(200)`` is ``[16, 37, 86, 200]``; ``total < first`` gives ``[total]``.
    """
    _whole("total examples", total, 1)
    _whole("first look's examples", first, 1)
    _whole("looks", looks, 1)
    if total <= first or looks == 1:
        return [total]
    ratio = (total / first) ** (1.0 / (looks - 1))
    sizes = [min(total, round(first * ratio ** k)) for k in range(looks - 1)] + [total]
    return sorted(set(sizes))


@dataclasses.dataclass(frozen=True)
class Look:
    """One interim look of a sequential screen (``screen_look``).

    Attributes:
        status: pass or fail (decided: stop scoring this candidate), or continue (score the
            next prefix). Never continue at the last look.
        n: paired examples of this look.
        look: this look's number, 1-based.
        looks: the looks planned.
        alpha_per_look: the two-sided error of this look's interval (alpha / looks).
        degradation: the change in the bad direction (> 0: worse), relative to the
            baseline's value (mode relative; metric units for a baseline of 0) or in metric
            units (mode absolute).
        ci: the interval of the degradation at level 1 - alpha_per_look, same units.
        allowance: the allowed degradation, same units.
        criterion: non_inferior or no_significant_loss.
        why: the decision in words.
        test: the paired test of this look (its intervals at level 1 - alpha_per_look; its
            status is the plain test's at that level, the final look's decision).
    """

    status: Literal["pass", "fail", "continue"]
    n: int
    look: int
    looks: int
    alpha_per_look: float
    degradation: float
    ci: tuple[float, float]
    allowance: float
    criterion: str
    why: str
    test: PairedTest

    @property
    def decided(self) -> bool:
        return self.status != "continue"


def _check_criterion(criterion) -> str:
    if criterion not in CRITERIA:
        raise UsageError(f"unknown screening criterion {criterion!r} "
                         f"(one of {', '.join(CRITERIA)})")
    return CRITERIA[criterion]


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) \
            or not (0 < alpha < 1) or not math.isfinite(alpha):
        raise UsageError(f"screening alpha must be a number between 0 and 1, got {alpha!r}")
    return float(alpha)


def screen_look(base_examples: list[dict], cand_examples: list[dict], kind: str, metric: str,
                options: dict | None, higher_is_better: bool, criterion: str,
                allowance: float, mode: str, look: int, looks: int, alpha: float = 0.05,
                resamples: int = 1000, seed: int = 0) -> Look:
    """Look ``look`` of ``looks`` at a candidate scored on the examples so far (both sides on
    the same ids: the first ``look_sizes(...)[look - 1]`` tune examples).

    The paired test of ``tasks/paired.py`` at two-sided level ``1 - alpha / looks`` (the
    screening ``alpha`` spent evenly over the planned looks, Bonferroni: a wrong pass or fail
    at any look, stopping at the first decisive one, has probability at most ``alpha / 2``
    whatever the correlation of the looks; conservative, see the module's docstring). With d
    the degradation (> 0 worse), [lo, hi] its interval and A the allowance
    (``allowance x |baseline|`` in mode relative, ``allowance`` in mode absolute):

    - ``non_inferior``: pass if hi <= A; fail if lo > A; else continue. At the last look
      (``look == looks``): pass iff hi <= A (non-inferiority at this level).
    - ``no_significant_loss``: fail early only if lo > A (a loss beyond the allowance
      demonstrated); pass early if hi <= A; else continue. At the last look: fail iff d > A and
      lo > 0 (the significance rule at this level), else pass.

    Raises:
        UsageError: one line, for an unknown criterion or mode, a look outside 1..looks, an
            alpha outside (0, 1), or examples that cannot be paired and scored.
    """
    test = _check_criterion(criterion)
    if mode not in MODES:
        raise UsageError(f"unknown allowance mode {mode!r} (one of {', '.join(MODES)})")
    _whole("looks", looks, 1)
    _whole("look", look, 1)
    if look > looks:
        raise UsageError(f"look {look} is beyond the {looks} planned")
    alpha = _check_alpha(alpha)
    per_look = alpha / looks
    level = check_level(1.0 - per_look)
    out = paired_test(base_examples, cand_examples, kind, metric, options, higher_is_better,
                      test, mode, allowance, resamples, seed, level)
    d, (lo, hi), a = out.degradation, out.degradation_ci95, out.allowance
    last = look == looks
    if criterion == "non_inferior":
        status = ("pass" if hi <= a else "fail") if last else \
            "pass" if hi <= a else "fail" if lo > a else "continue"
    else:
        status = ("fail" if d > a and lo > 0 else "pass") if last else \
            "fail" if lo > a else "pass" if hi <= a else "continue"
    scale = abs(out.baseline) if mode == "relative" and out.baseline else 1.0
    rel = mode == "relative" and bool(out.baseline)

    def shown(x: float) -> str:
        return f"{x:+.2%}" if rel else f"{x:+.4g}"
    reason = {"pass": "interval's bad end within the allowance" if hi <= a else
              "no significant loss beyond the allowance",
              "fail": "a loss beyond the allowance demonstrated" if lo > a else
              "interval's bad end beyond the allowance" if criterion == "non_inferior" else
              "beyond the allowance and significant",
              "continue": "undecided, score more examples"}[status]
    why = (f"{metric} {criterion} look {look}/{looks} on {out.n} examples: {status}: "
           f"degradation {shown(d / scale)}, {100 * level:.4g}% CI "
           f"[{shown(lo / scale)}, {shown(hi / scale)}], allowance {shown(a / scale)}: {reason}")
    return Look(status=status, n=out.n, look=look, looks=looks, alpha_per_look=per_look,
                degradation=d / scale, ci=(lo / scale, hi / scale), allowance=a / scale,
                criterion=criterion, why=why, test=out)


def screen(base_examples: list[dict], cand_examples: list[dict], kind: str, metric: str,
           options: dict | None, higher_is_better: bool, criterion: str, allowance: float,
           mode: str, sizes: list[int], alpha: float = 0.05, resamples: int = 1000,
           seed: int = 0) -> list[Look]:
    """Every look a sequential screen takes of examples already scored: ``screen_look`` on
    the first ``sizes[k]`` examples (in the baseline's order, paired by id) for k = 0, 1, ...
    until one decides. The last ``Look`` is the decision; ``len(result)`` the looks taken.
    A search that scores as it goes calls ``screen_look`` itself after each prefix."""
    if not sizes or any(not isinstance(s, int) or isinstance(s, bool) for s in sizes) or \
            sizes != sorted(set(sizes)) or sizes[0] < 1:
        raise UsageError(f"look sizes must be increasing whole numbers >= 1, got {sizes!r}")
    base, cand = pair_examples(base_examples, cand_examples)
    if sizes[-1] > len(base):
        raise UsageError(f"the last look needs {sizes[-1]} examples, only {len(base)} scored")
    taken: list[Look] = []
    for k, n in enumerate(sizes, start=1):
        taken.append(screen_look(base[:n], cand[:n], kind, metric, options, higher_is_better,
                                 criterion, allowance, mode, k, len(sizes), alpha, resamples,
                                 seed))
        if taken[-1].decided:
            break
    return taken


def degradation_of(base: list[dict], cand: list[dict], kind: str, metric: str,
                   options: dict | None, higher_is_better: bool, mode: str = "relative"
                   ) -> float:
    """The point degradation of ``cand`` against ``base`` on their (paired) examples: the
    change in the bad direction (> 0 worse), relative to the baseline (mode relative; metric
    units for a baseline of 0) or in metric units (absolute). No interval."""
    if mode not in MODES:
        raise UsageError(f"unknown allowance mode {mode!r} (one of {', '.join(MODES)})")
    b, c = pair_examples(base, cand)
    b_rows, aggregate = metric_rows(b, kind, metric, options)
    c_rows, _ = metric_rows(c, kind, metric, options)
    b_v, c_v = aggregate(b_rows), aggregate(c_rows)
    d = (b_v - c_v) if higher_is_better else (c_v - b_v)
    return d / abs(b_v) if mode == "relative" and b_v else d


def best_of(candidates: dict[str, list[dict]], base: list[dict], kind: str, metric: str,
            options: dict | None, higher_is_better: bool, mode: str = "relative"
            ) -> tuple[str, float]:
    """The candidate with the least degradation against ``base`` on the examples given, and
    that degradation (``degradation_of``; ties by name). Chosen and measured on the same
    examples, the figure is biased in the candidate's favour, the more so the more
    candidates: report a winner's quality from examples it was not chosen on."""
    if not candidates:
        raise UsageError("best_of needs at least one candidate")
    scored = sorted((degradation_of(base, ex, kind, metric, options, higher_is_better, mode),
                     name) for name, ex in candidates.items())
    d, name = scored[0]
    return name, d

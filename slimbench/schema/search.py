"""``search.json``: what ``slimbench search`` tried, what it measured and what it chose.

Every candidate the search built is kept with its evidence, whatever became of it, so that a
search that found no winner still answers "what came closest, and by how much". Screening
looked only at the *tune* side of each evaluation set; the winner's verdict is its
confirmation on *test* (``tasks/splits.py``), examples no candidate was chosen on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from slimbench.schema.checks import PairedTest
from slimbench.schema.codec import Typed
from slimbench.schema.measurements import Interval
from slimbench.schema.version import SCHEMA_VERSION

SEARCH_FORMAT = 1

# What became of a candidate, in the order the search reaches them.
Status = Literal[
    "failed",        # building or evaluating it raised: `why` says what
    "rejected",      # it missed the budget at `stage`: `why` says by how much
    "dominated",     # passed screening, but an accepted candidate is at least as good on
                     # every measured axis (quality, bytes): not timed
    "screened",      # passed screening and was timed; not confirmed (a better one won first)
    "not_confirmed",  # passed screening, failed its confirmation on test
    "winner",        # passed screening and its confirmation on test: the answer
    "not_reached",   # the time budget ran out before it was decided
]
Stage = Literal["build", "facts", "screen", "latency", "confirm"]


@dataclasses.dataclass(frozen=True)
class Step(Typed):
    """One recipe step.

    Attributes:
        name: the step's registered name (``slimbench ls steps``).
        params: its parameters, as the recipe gives them.
    """

    name: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Screen(Typed):
    """One budget criterion screened on *tune* with a sequential paired test.

    Attributes:
        task: the task (e.g. perplexity, next_line).
        metric: the metric within it (perplexity, acc, ...).
        criterion: non_inferior or no_significant_loss.
        allowance: the allowed degradation: a share of the baseline's value (mode
            relative) or in the metric's units (mode absolute).
        status: pass or fail (a test still undecided at the last planned look is decided
            there by the plain paired test at ``alpha_per_look``).
        examples: tune examples scored when it stopped.
        looks: interim looks taken (each a paired test on the examples so far).
        alpha_per_look: each look's two-sided level (the screening alpha spent evenly over
            the planned looks, so that stopping early keeps the overall error rate).
        degradation: the change in the bad direction at the last look (> 0: worse), in the
            allowance's terms.
        degradation_ci: its interval at ``alpha_per_look``.
        mode: relative (allowance and degradation are shares of the baseline's value) or
            absolute (in the metric's units, e.g. points of accuracy).
    """

    task: str
    metric: str
    criterion: str
    allowance: float
    status: Literal["pass", "fail"]
    examples: int
    looks: int
    alpha_per_look: float
    degradation: float
    degradation_ci: Interval
    mode: Literal["relative", "absolute"] = "relative"


@dataclasses.dataclass(frozen=True)
class Speed(Typed):
    """The objective, measured paired and interleaved against the uncompressed model
    (``bench/measure/paired.py``, as ``slimbench compare``).

    Attributes:
        metric: the latency metric (decode_ms_per_token, prefill_ms, generate_ms), or
            model_bytes_on_disk / peak_rss_bytes for the size and memory objectives.
        speedup: baseline / candidate (time, bytes or memory): > 1 is better.
        ci95: its 95% interval (null for bytes, which are exact).
        pairs: interleaved pairs measured (0 for bytes).
        warnings: what makes the A/B doubtful (other work on the host, too few pairs, a
            first-runner effect), as ``slimbench compare`` prints them.
    """

    metric: str
    speedup: float
    ci95: Interval | None
    pairs: int
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Candidate(Typed):
    """One recipe the search tried.

    Attributes:
        name: c01, c02, ... in the order of the space.
        steps: the recipe.
        content_key: the artifact's key in the content-addressed cache, or null when it was
            never built.
        status: what became of it (see ``Status``).
        stage: where it was decided (build, facts, screen, latency, confirm), or null.
        why: the reason in words ("" for a winner).
        bytes_on_disk: bytes of the artifact's weight files.
        parameters: parameter count.
        nonzero_parameters: parameters that are not exactly zero.
        screening: each budget criterion's sequential test on tune.
        tune_examples: tune examples scored in all (the sum over the tasks).
        speed: the objective against the baseline, for candidates that were timed.
        confirmation: the budget's paired tests on test (at the search's alpha), for the
            candidates that were confirmed.
        seconds: time spent on it (build, screening, timing, confirmation).
    """

    name: str
    steps: list[Step]
    content_key: str | None
    status: Status
    stage: Stage | None
    why: str
    bytes_on_disk: int | None = None
    parameters: int | None = None
    nonzero_parameters: int | None = None
    screening: list[Screen] = dataclasses.field(default_factory=list)
    tune_examples: int = 0
    speed: Speed | None = None
    confirmation: list[PairedTest] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def check(self):
        if self.status == "rejected" and not self.why.strip():
            return "why", f"text saying why the candidate was {self.status}", self.why
        if self.status == "winner" and (not self.confirmation or any(
                t.status != "pass" for t in self.confirmation)):
            return ("confirmation", "the passing paired tests on test that made it the winner",
                    [t.status for t in self.confirmation])
        if self.status == "not_confirmed" and all(t.status == "pass" for t in self.confirmation):
            return ("confirmation", "the paired tests on test, one of them failed, that it was "
                    "not confirmed by", [t.status for t in self.confirmation])
        return None

    @property
    def recipe(self) -> list[tuple[str, dict]]:
        """The steps as a recipe has them: (name, params) in order."""
        return [(s.name, dict(s.params)) for s in self.steps]


@dataclasses.dataclass
class SearchResult(Typed):
    """What ``slimbench search`` writes as ``OUT/search.json``.

    Attributes:
        model: the model searched (spec as given).
        device: cpu or cuda.
        threads: intra-op threads of every measurement.
        objective: decode, prefill, generate, size or memory.
        budget: the budget file as given (criteria, ceilings, minimum speedup).
        baseline_bytes_on_disk: the uncompressed model's bytes on disk, which the budget's
            ceilings on bytes (``ratio_at_most``) compare against, or null when not known
            (search.json files written before it was recorded).
        space: where the candidates came from (a file, or "default-<device>").
        alpha: the confirmation's overall level: each confirmation test runs at
            alpha / max_confirmations, so that confirming up to that many candidates on the
            same test examples keeps the chance of a false "meets the budget" within alpha.
        screening_alpha: the screening tests' overall level (spent over the looks).
        searched_on: the split every screening test used (always "tune").
        confirmed_on: the split of the confirmation (always "test"); no example of it was
            looked at before the confirmation.
        candidates: every candidate, in the order of the space.
        tried: candidates decided (not "not_reached").
        confirmed: names of the candidates that went to confirmation, in that order.
        max_confirmations: how many candidates the search confirms at most.
        winner: the confirmed candidate with the best objective, or null.
        closest: with no winner, the candidates that came closest, best first: each entry
            the candidate's name, optionally followed by what it missed by in words
            ("c03 (prune_structured(ratio=0.3)): rejected at screen; perplexity ...").
        seconds: the search's wall time.
        environment: the machine, versions and threads.
        slimbench_search: the search document's format (1).
        document: always "search".
        schema_version: the results schema's version.
    """

    model: str
    device: str
    threads: int | None
    objective: str
    budget: dict[str, Any]
    space: str
    alpha: float
    screening_alpha: float
    candidates: list[Candidate]
    tried: int
    confirmed: list[str]
    winner: str | None
    closest: list[str]
    seconds: float
    environment: dict
    max_confirmations: int = 1
    baseline_bytes_on_disk: int | None = None
    searched_on: Literal["tune"] = "tune"
    confirmed_on: Literal["test"] = "test"
    slimbench_search: Literal[1] = SEARCH_FORMAT
    document: Literal["search"] = "search"
    schema_version: int = SCHEMA_VERSION

    def candidate(self, name: str) -> Candidate:
        """The candidate called ``name``."""
        found = [c for c in self.candidates if c.name == name]
        if not found:
            raise KeyError(f"the search has no candidate {name!r}")
        return found[0]

    def closest_candidates(self) -> list[tuple[Candidate, str]]:
        """Each ``closest`` entry's candidate, with the entry itself."""
        return [(self.candidate(_named(entry, self.candidates)), entry)
                for entry in self.closest]

    def check(self):
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            return "candidates", "candidates with distinct names", twice
        winners = [c.name for c in self.candidates if c.status == "winner"]
        if winners != ([self.winner] if self.winner is not None else []):
            return "winner", ("the one candidate whose status is winner" if winners else
                              "null (no candidate's status is winner)"), self.winner
        unknown = [n for n in self.confirmed if n not in names]
        if unknown:
            return "confirmed", "names of candidates of the search", unknown
        unknown = [e for e in self.closest if _named(e, self.candidates) is None]
        if unknown:
            return "closest", "entries that each start with a candidate's name", unknown
        if self.winner is not None and self.winner not in self.confirmed:
            return "confirmed", f"a list that holds the winner {self.winner!r}", self.confirmed
        decided = sum(c.status != "not_reached" for c in self.candidates)
        if self.tried != decided:
            return "tried", f"{decided} (the candidates whose status is not not_reached)", \
                self.tried
        return None


def _named(entry: str, candidates: list[Candidate]) -> str | None:
    """The name of the candidate a ``closest`` entry is about: the whole entry, or the name
    it starts with (followed by a space, a colon or a comma); None if none."""
    for name in sorted((c.name for c in candidates), key=len, reverse=True):
        if entry == name or entry.startswith(name) and entry[len(name)] in " :,(":
            return name
    return None

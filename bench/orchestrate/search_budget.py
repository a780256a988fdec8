"""The budget of ``slimbench search``: what a candidate must keep, in the vocabulary of a
suite's acceptance criteria (``suite.py``: ``metric: {criterion: number}``).

    perplexity.perplexity: {non_inferior: 0.02}                  # quality: +2% of the baseline
    next_line.acc: {no_significant_loss: 2, mode: absolute}      # 2 points of accuracy (in %)
    model_bytes_on_disk: {ratio_at_most: 0.5}                    # optional ceilings: size ...
    peak_rss_bytes: {ratio_at_most: 0.8}                         # ... and memory
    decode_ms_per_token: {speedup_at_least: 1.2}                 # the least speedup worth having

- quality (``task.metric``): ``non_inferior: a`` (the paired interval's bad end within the
  allowance) or ``no_significant_loss: a`` (fails only on a significant loss beyond it), the
  allowance ``a x |baseline|`` (``mode: relative``, the default) or ``a`` in the metric's own
  units (``mode: absolute``; slimbench's accuracies, F1, ROUGE and BLEU are in percent, so 2 is
  two points; lm-eval's accuracies are fractions, so two points is 0.02). ``a`` may be 0. At
  least one quality criterion. The task is a registered one, or one the optional ``tasks:``
  list declares as a suite's ``tasks:`` does: a task YAML file (named by the ``name`` it
  gives) or ``{lm_eval: {tasks: [NAME, ...], include_path: DIR}}`` (each leaf task by lm-eval's
  name, its metrics as its results key them: ``arc_easy.acc``,
  ``gsm8k.exact_match_strict-match``; their directions and aggregations are lm-eval's, checked
  when the search loads the task).
- ceilings (the results schema's ``Memory`` fields; ``bytes_on_disk`` names
  ``model_bytes_on_disk``): ``ratio_at_most: r``, candidate / baseline <= r.
- latency (``decode_ms_per_token``, ``prefill_ms``, ``generate_ms``, ...):
  ``speedup_at_least: s`` (the paired A/B's 95% low end >= s: the objective's least speedup
  worth having; one such entry at most) or ``slowdown_at_most: e``.

Every entry is checked before any work; a problem is one ``UsageError`` naming the file and
the entry. ``Budget.to_acceptance()`` is the ``acceptance: {variant: ...}`` entry of a suite
(``best-suite.yaml``), so the release gate judges exactly the budget; ``Budget.suite_tasks``
its ``tasks:``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from slimbench.bench.orchestrate.suite import (
    LATENCY_CRITERIA,
    METRIC_ALIASES,
    QUALITY_CRITERIA,
    SIZE_CRITERIA,
    check_rule,
    make_rule,
)
from slimbench.errors import SlimbenchError, UsageError


@dataclasses.dataclass(frozen=True)
class QualityCriterion:
    """``task.metric`` held to a paired test (``tasks/paired.py``) against the baseline.

    Attributes:
        task, metric: a registered task and one of its metrics.
        criterion: ``non_inferior`` or ``no_significant_loss``.
        allowance: the allowed degradation: x |baseline| (relative) or in metric units.
        mode: ``relative`` or ``absolute``.
        higher_is_better: the metric's direction (from the task).
    """

    task: str
    metric: str
    criterion: str
    allowance: float
    mode: str = "relative"
    higher_is_better: bool = True

    @property
    def key(self) -> str:
        """``task.metric``, as acceptance criteria and results name it."""
        return f"{self.task}.{self.metric}"

    @property
    def test(self) -> str:
        """The paired test's name in ``tasks/paired.py``: non_inferiority or significance."""
        return QUALITY_CRITERIA[self.criterion]

    def describe(self) -> str:
        """``perplexity.perplexity non_inferior 0.02``; ``next_line.acc no_significant_loss 2
        absolute`` for an absolute allowance."""
        mode = " absolute" if self.mode == "absolute" else ""
        return f"{self.key} {self.criterion} {self.allowance:g}{mode}"


@dataclasses.dataclass(frozen=True)
class Ceiling:
    """A size or memory figure held to ``ratio`` x the baseline's (``ratio_at_most``)."""

    metric: str  # as written (``bytes_on_disk`` or a Memory field)
    ratio: float

    @property
    def field(self) -> str:
        """The results schema's ``Memory`` field it reads."""
        return METRIC_ALIASES.get(self.metric, self.metric)


@dataclasses.dataclass(frozen=True)
class Budget:
    """A parsed budget (see the module docstring).

    Attributes:
        quality: the quality criteria, in the file's order (at least one).
        ceilings: size and memory ceilings.
        min_speedup: the least speedup worth having (``speedup_at_least``), or None.
        speedup_metric: the latency metric ``min_speedup`` was given for, or None.
        max_slowdown: latency metric -> the largest slowdown allowed (``slowdown_at_most``).
        source: the file it came from.
    """

    quality: tuple[QualityCriterion, ...]
    ceilings: tuple[Ceiling, ...] = ()
    min_speedup: float | None = None
    speedup_metric: str | None = None
    max_slowdown: dict[str, float] = dataclasses.field(default_factory=dict)
    source: str = "budget"
    declared: tuple[str | dict, ...] = ()

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the budget scores, each once, in the file's order."""
        return tuple(dict.fromkeys(q.task for q in self.quality))

    def task_spec(self, task: str):
        """The spec that scores ``task``: a declared task file or lm-eval task (an
        ``LmEvalSpec`` of that one leaf task), else the registered task of that name."""
        return declared_specs(self.declared, self.source).get(task) or _registered(task)

    @property
    def suite_tasks(self) -> list[str | dict]:
        """The budget's tasks as a suite's ``tasks:`` lists them: each registered name, and
        the declared entries as written (task files, ``{lm_eval: ...}``)."""
        declared = declared_specs(self.declared, self.source)
        return [t for t in self.tasks if t not in declared] + [
            entry for entry in self.declared
            if any(name in self.tasks for name in _names(entry, self.source))]

    def to_acceptance(self) -> dict[str, dict]:
        """``metric -> {criterion: number}`` (``mode: absolute`` where it is), in the file's
        order by kind (quality, ceilings, latency): a suite's ``acceptance: {variant: ...}``
        entry, and what ``parse_suite`` makes of it (it round-trips)."""
        out = {q.key: make_rule(q.criterion, q.allowance, q.mode) for q in self.quality}
        out |= {c.metric: make_rule("ratio_at_most", c.ratio) for c in self.ceilings}
        if self.speedup_metric is not None and self.min_speedup is not None:
            out[self.speedup_metric] = make_rule("speedup_at_least", self.min_speedup)
        out |= {m: make_rule("slowdown_at_most", e) for m, e in self.max_slowdown.items()}
        return out

    def to_dict(self) -> dict:
        """As recorded in ``search.json``: the acceptance mapping, and the tasks."""
        return {"source": self.source, "criteria": self.to_acceptance(),
                "tasks": list(self.tasks)} | (
            {"declared": list(self.declared)} if self.declared else {})


def _registered(task: str):
    from slimbench.tasks.specs import TASKS

    return TASKS.get(task)


def _names(entry, source: str) -> list[str]:
    """The task names a ``tasks:`` entry gives results (a task file: its ``name``; lm-eval:
    each task it lists)."""
    from slimbench.tasks.specs import resolve_task

    try:
        spec = resolve_task(entry)
    except SlimbenchError as e:
        raise UsageError(f"{source}: tasks: {e}") from None
    return list(spec.tasks) if spec.kind == "lm_eval" else [spec.name]


def declared_specs(declared: tuple[str | dict, ...], source: str) -> dict:
    """Task name -> its spec, for the budget's ``tasks:`` entries; an lm-eval entry gives one
    ``LmEvalSpec`` per task it lists, so that each is scored (and split) on its own."""
    from slimbench.tasks.specs import resolve_task

    specs: dict = {}
    for entry in declared:
        spec = resolve_task(entry)
        if spec.kind == "lm_eval":
            for name in spec.tasks:
                specs[name] = dataclasses.replace(spec, tasks=(name,))
        else:
            specs[spec.name] = spec
    return specs


def _declared(raw, source: str) -> tuple[str | dict, ...]:
    """The ``tasks:`` list, each entry resolvable and named apart (as a suite's)."""
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{source}: tasks must be a list of task files or {{lm_eval: {{tasks: "
                         f"[...], include_path: DIR}}}} entries, got {raw!r}")
    seen: dict[str, str | dict] = {}
    for entry in raw:
        if not isinstance(entry, str | dict):
            raise UsageError(f"{source}: tasks: {entry!r} is not a task file or an lm_eval "
                             "entry")
        for name in _names(entry, source):
            if name in seen:
                raise UsageError(f"{source}: tasks {seen[name]!r} and {entry!r} are both "
                                 f"named {name!r}; task names must differ")
            seen[name] = entry
    return tuple(raw)


def _quality(metric: str, name: str, value: float, mode: str, where: str,
             declared: dict) -> QualityCriterion:
    task, dot, score = metric.partition(".")
    if not dot or not task or not score:
        raise UsageError(f"{where}: {name} needs a quality metric task.metric, e.g. "
                         "perplexity.perplexity")
    spec = declared.get(task)
    if spec is not None and spec.kind == "lm_eval":
        # lm-eval's metrics and directions are known once lm-eval loads the task: the
        # search checks them before any work (``Search.__init__``)
        return QualityCriterion(task, score, name, value, mode)
    try:
        spec = spec or _registered(task)
    except SlimbenchError as e:
        raise UsageError(f"{where}: {e} (a task of your own: list its file, or its lm_eval "
                         "entry, under the budget's tasks:)") from None
    metrics = {m.metric: m for m in spec.metric_list}
    if score not in metrics:
        raise UsageError(f"{where}: task {task} has no metric {score!r} (its metrics: "
                         f"{', '.join(metrics)})")
    return QualityCriterion(task, score, name, value, mode, metrics[score].higher_is_better)


def parse_budget(data, source: str = "budget") -> Budget:
    """A validated ``Budget`` from parsed YAML; every problem is one ``UsageError`` naming
    ``source`` and the entry."""
    from slimbench.bench.measure.paired import SCENARIO_OF_METRIC
    from slimbench.schema import Memory

    if not isinstance(data, dict) or not data:
        raise UsageError(f"{source}: expected a mapping of metric: {{criterion: number}}, e.g. "
                         "perplexity.perplexity: {non_inferior: 0.02}")
    memory = {f.name for f in dataclasses.fields(Memory)}
    declared = _declared(data["tasks"], source) if "tasks" in data else ()
    specs = declared_specs(declared, source)
    quality, ceilings, speedup, slowdown = [], [], {}, {}  # speedup: one entry at most
    for metric, rule in data.items():
        metric = str(metric)
        if metric == "tasks":
            continue
        where = f"{source}: {metric}"
        name, value, mode = check_rule(rule, where)
        if name in QUALITY_CRITERIA:
            if metric in SCENARIO_OF_METRIC or METRIC_ALIASES.get(metric, metric) in memory:
                raise UsageError(f"{where}: {name} needs a quality metric task.metric, e.g. "
                                 "perplexity.perplexity")
            quality.append(_quality(metric, name, value, mode, where, specs))
        elif name in SIZE_CRITERIA:
            if METRIC_ALIASES.get(metric, metric) not in memory:
                raise UsageError(f"{where}: {name} needs a size or memory metric (one of "
                                 f"{', '.join(sorted(memory | set(METRIC_ALIASES)))})")
            ceilings.append(Ceiling(metric, value))
        else:
            assert name in LATENCY_CRITERIA, name
            if metric not in SCENARIO_OF_METRIC:
                raise UsageError(f"{where}: {name} needs a latency metric (one of "
                                 f"{', '.join(SCENARIO_OF_METRIC)})")
            if name == "speedup_at_least" and speedup:
                raise UsageError(f"{where}: a second speedup_at_least (the first is "
                                 f"{next(iter(speedup))}); the budget states one least "
                                 "speedup, for the search's objective")
            (speedup if name == "speedup_at_least" else slowdown)[metric] = value
    if not quality:
        raise UsageError(f"{source}: no quality criterion; a budget needs at least one, e.g. "
                         "perplexity.perplexity: {non_inferior: 0.02}")
    (speedup_metric, min_speedup), = speedup.items() or [(None, None)]
    unused = sorted(set(specs) - {q.task for q in quality})
    if unused:
        raise UsageError(f"{source}: tasks {', '.join(unused)} are declared but no criterion "
                         "names them")
    return Budget(tuple(quality), tuple(ceilings), min_speedup, speedup_metric, slowdown,
                  source, declared)


def load_budget(path: str | Path) -> Budget:
    """``parse_budget`` of a budget file."""
    from slimbench.files import read_yaml

    return parse_budget(read_yaml(Path(path), "budget file"), str(path))

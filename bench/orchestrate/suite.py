"""Suite files: which variants, devices, scenarios and tasks a run measures.

    name: demo
    variants:                       # name -> input model + recipe steps (as in recipe YAML)
      baseline: {model: reference}
      ort-int8: {model: reference, recipe: [export_onnx, ort_dynamic_int8]}
    devices: [cpu, cuda]            # cuda cells are skipped, with the reason, without a GPU
    threads: 2
    latency: {prefill: [128], decode_contexts: [128], new_tokens: 32, repeats: 5}
    tasks: [perplexity, method_name]
    task_limit: 50                  # examples per generation task
    perplexity_limit: 100           # texts for perplexity (default: all)
    timeout: 900                    # seconds per cell
    baseline_variant: baseline      # deltas in reports are against this variant
    acceptance:                     # optional: per variant, criteria against its baseline,
      ort-int8:                     # judged within the run (bench/orchestrate/acceptance.py)
        perplexity.perplexity: {non_inferior: 0.02}     # paired bootstrap, 95% bad end
        method_name.f1: {no_significant_loss: 0.05}     # fails only on a significant loss
        next_line.acc: {no_significant_loss: 2, mode: absolute}   # 2 points (default: relative)
        decode_ms_per_token: {speedup_at_least: 1.5}    # paired interleaved A/B, 95% low end
        prefill_ms: {slowdown_at_most: 0.05}            # A/B ratio's 95% high end <= 1.05
        model_bytes_on_disk: {ratio_at_most: 0.6}       # size / memory rows of the run
    paired: {min_seconds: 10, max_seconds: 60, precision: 0.02}   # the latency A/B's budget

Overrides from the command line use dotted keys: ``threads=1 latency.repeats=3``. Everything is
validated before any work: unknown keys, steps, parameters and tasks fail with one message.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

from slimbench.errors import SlimbenchError, UsageError
from slimbench.names import check_name

KEYS = {"name", "variants", "devices", "threads", "latency", "tasks", "task_limit", "timeout",
        "baseline_variant", "perplexity_limit", "acceptance", "paired"}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    model: str
    recipe: tuple[tuple[str, dict], ...] = ()
    quality: bool = True  # random-weight shape models are timed, never scored


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    variants: tuple[Variant, ...]
    devices: tuple[str, ...]
    threads: int
    latency: dict
    tasks: tuple[str | dict, ...]  # names, task files, {lm_eval: {...}} entries
    task_limit: int | None
    timeout: float
    baseline_variant: str
    perplexity_limit: int | None = None
    acceptance: dict = dataclasses.field(default_factory=dict)  # variant -> metric -> criterion
    paired: dict = dataclasses.field(default_factory=dict)  # the latency A/B's settings

    def to_dict(self) -> dict:
        """As saved in ``suite.json``; without acceptance and paired when the suite has none,
        so a suite without criteria is recorded as it was before they existed (resume)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v or k not in ("acceptance", "paired")}


def apply_overrides(data: dict, overrides: list[str]) -> dict[str, Any]:
    """``key.sub=value`` strings applied to the parsed YAML (values parsed as YAML scalars):
    a copy of the suite's mapping, checked afterwards as the file itself is."""
    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise UsageError(f"override {item!r} must look like key=value")
        parts = key.split(".")
        if parts[0] not in KEYS:
            raise UsageError(f"override {item!r}: unknown suite key {parts[0]!r}")
        target = data
        for p in parts[:-1]:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise UsageError(f"override {item!r}: {p} is not a mapping")
        try:
            target[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UsageError(f"override {item!r}: {raw!r} is not a YAML value (quote text, "
                             "close brackets)") from None
    return data


def _number(data: dict, key: str, kind, source: str, default=None):
    """``data[key]`` as ``kind`` (int or float), or one clear error naming the key."""
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or (kind is int and not float(value).is_integer()):
        raise UsageError(f"{source}: {key} must be {'an integer' if kind is int else 'a number'}"
                         f", got {value!r}")
    return kind(value)


def _names(data: dict, key: str, source: str, default: list) -> tuple[str, ...]:
    value = data.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        example = ", ".join(default) or "perplexity"
        raise UsageError(f"{source}: {key} must be a list of names, e.g. [{example}], got "
                         f"{value!r}")
    return tuple(value)


def _variant(name, spec, source: str) -> Variant:
    """One ``variants:`` entry: its name checked, its recipe resolved and its chain checked."""
    from slimbench.compress.recipe import parse_recipe, resolve
    from slimbench.compress.steps import check_chain

    check_name(name, "variant", source)
    if not isinstance(spec, dict) or "model" not in spec or set(spec) - {"model", "recipe",
                                                                         "quality"}:
        raise UsageError(f"{source}: variant {name}: give model (and optionally recipe, "
                         "quality)")
    if not isinstance(spec["model"], str):
        raise UsageError(f"{source}: variant {name}: model must be a model spec (text), got "
                         f"{spec['model']!r}")
    if spec.get("recipe") is not None and not isinstance(spec["recipe"], list):
        raise UsageError(f"{source}: variant {name}: recipe must be a list of steps, e.g. "
                         "[export_onnx, ort_dynamic_int8]")
    steps: tuple = ()
    if spec.get("recipe"):
        try:
            recipe = parse_recipe({"steps": spec["recipe"]}, "recipe")
            steps = tuple(resolve(recipe, str(spec["model"])))
            check_chain(str(spec["model"]), [s for s, _ in steps])
        except SlimbenchError as e:
            raise UsageError(f"{source}: variant {name}: {e}") from None
    quality = bool(spec.get("quality", not str(spec["model"]).startswith("shape:")))
    return Variant(str(name), str(spec["model"]), steps, quality)


def _variants(data: dict, source: str) -> tuple[Variant, ...]:
    raw = data.get("variants")
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f"{source}: 'variants' must map names to {{model, recipe}}")
    return tuple(_variant(name, spec, source) for name, spec in raw.items())


def _devices(data: dict, source: str) -> tuple[str, ...]:
    devices = _names(data, "devices", source, ["cpu"]) or ("cpu",)
    for d in devices:
        if not (d == "cpu" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
            raise UsageError(f"{source}: device {d!r}: use cpu, cuda or cuda:N")
    return devices


def _latency(data: dict, source: str) -> dict:
    """The ``latency:`` mapping, checked by building a LatencyConfig from it (kept as given)."""
    from slimbench.bench.measure.cell import LatencyConfig
    from slimbench.registry import unknown_name

    latency = data.get("latency") or {}
    if not isinstance(latency, dict):
        raise UsageError(f"{source}: latency must be a mapping, e.g. {{prefill: [128]}}")
    latency = dict(latency)
    known = [f.name for f in dataclasses.fields(LatencyConfig)]
    for key in latency:
        if key not in known:
            raise UsageError(f"{source}: {unknown_name('latency option', str(key), known)}")
    try:
        LatencyConfig(**latency)
    except UsageError as e:
        raise UsageError(f"{source}: {e}") from None
    return latency


def _check_positions(variants: tuple[Variant, ...], latency: dict, source: str) -> None:
    """Each variant whose positions are known before any work takes the latency lengths (a
    longer prompt fails in the cell, after its artifact was built); the others are checked
    when their cell starts."""
    from slimbench.bench.measure.cell import LatencyConfig
    from slimbench.compress.loader import spec_max_positions

    cfg = LatencyConfig(**latency)
    for v in variants:
        try:
            positions = spec_max_positions(v.model)
            if positions is not None:  # recipes keep the positions: the input model's count
                cfg.check_positions(v.model, positions)
        except SlimbenchError as e:
            raise UsageError(f"{source}: variant {v.name}: {e}") from None


def _tasks(data: dict, source: str) -> tuple[str | dict, ...]:
    """Task specs as given (names, task files, ``{lm_eval: {...}}`` entries), each resolvable
    and with a name no other task has."""
    from slimbench.tasks.specs import resolve_task

    raw = data.get("tasks") or []
    if not isinstance(raw, list) or not all(isinstance(t, str | dict) for t in raw):
        raise UsageError(f"{source}: tasks must be a list of names (or task files, or "
                         f"{{lm_eval: {{tasks: [...]}}}} entries), e.g. [perplexity], got "
                         f"{raw!r}")
    tasks = tuple(raw)
    task_names: dict[str, str | dict] = {}
    for t in tasks:
        try:
            spec = resolve_task(t)  # results are keyed by its name, never by a file path
        except SlimbenchError as e:
            raise UsageError(f"{source}: {e}") from None
        for name in spec.tasks if spec.kind == "lm_eval" else [spec.name]:
            if name in task_names:
                raise UsageError(f"{source}: tasks {task_names[name]!r} and {t!r} are both "
                                 f"named {name!r}; task names must differ")
            task_names[name] = t
    return tasks



# acceptance criteria (bench/orchestrate/acceptance.py judges them): name -> what it needs
QUALITY_CRITERIA = {"non_inferior": "non_inferiority", "no_significant_loss": "significance"}
LATENCY_CRITERIA = ("speedup_at_least", "slowdown_at_most")
SIZE_CRITERIA = ("ratio_at_most",)
CRITERIA = (*QUALITY_CRITERIA, *LATENCY_CRITERIA, *SIZE_CRITERIA)
METRIC_ALIASES = {"bytes_on_disk": "model_bytes_on_disk"}  # the manifest's name for it
# a quality criterion's allowance: ``relative`` (x |baseline|, the default) or ``absolute``
# (metric units: 2 is two points of an accuracy in percent)
QUALITY_MODES = ("relative", "absolute")
PAIRED_KEYS = ("min_seconds", "max_seconds", "precision", "trial_seconds")  # PairedConfig's


def _paired(data: dict, source: str) -> dict:
    """The ``paired:`` settings of the latency A/B (those given; PairedConfig's defaults for
    the rest), checked by building a PairedConfig from them."""
    from slimbench.bench.measure.paired import PairedConfig

    raw = data.get("paired")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) - set(PAIRED_KEYS):
        raise UsageError(f"{source}: paired must be a mapping of {', '.join(PAIRED_KEYS)}, "
                         f"got {raw!r}")
    out = {k: _number(raw, k, float, f"{source}: paired") for k in raw}
    try:
        PairedConfig(**out)
    except UsageError as e:
        raise UsageError(f"{source}: paired: {e}") from None
    return out


def suite_baselines(suite: Suite) -> dict[str, str]:
    """Each variant's baseline as the reports have it (``reports/table.py baselines_for``)."""
    from slimbench.reports.output import baselines_for
    from slimbench.schema import CellInfo, CellResult

    heads = [CellResult(CellInfo(v.name, v.name, v.model, [s for s, _ in v.recipe], "cpu"),
                        "skipped") for v in suite.variants]
    return baselines_for(heads, suite.baseline_variant)


def _criterion(suite: Suite, variant: Variant, metric: str, rule, where: str) -> dict:
    """One ``metric: {criterion: number}`` entry, checked against what the suite measures."""
    from slimbench.bench.measure.cell import LatencyConfig
    from slimbench.bench.measure.paired import SCENARIO_OF_METRIC
    from slimbench.schema import Memory
    from slimbench.tasks.specs import resolve_task

    name, value, mode = check_rule(rule, where)
    memory = {f.name for f in dataclasses.fields(Memory)}
    known = (f"latency: {', '.join(SCENARIO_OF_METRIC)}; size and memory: "
             f"{', '.join(sorted(memory | set(METRIC_ALIASES)))}; quality: task.metric")
    if name in LATENCY_CRITERIA:
        if metric not in SCENARIO_OF_METRIC:
            raise UsageError(f"{where}: {name} needs a latency metric ({known})")
        scenario = SCENARIO_OF_METRIC[metric]
        lat = LatencyConfig(**suite.latency)
        needs = {"prefill": ("latency.prefill", lat.prefill),
                 "decode": ("latency.decode_contexts", lat.decode_contexts),
                 "generate": ("latency.generate_prompt", lat.generate_prompt)}[scenario]
        if not needs[1]:
            raise UsageError(f"{where}: the {scenario} scenario needs {needs[0]}, which is "
                             "empty")
    elif name in SIZE_CRITERIA:
        if METRIC_ALIASES.get(metric, metric) not in memory:
            raise UsageError(f"{where}: {name} needs a size or memory metric ({known})")
    else:
        task, dot, score = metric.partition(".")
        if not dot or metric in SCENARIO_OF_METRIC:
            raise UsageError(f"{where}: {name} needs a quality metric task.metric, e.g. "
                             f"perplexity.perplexity ({known})")
        specs = {}
        for s in map(resolve_task, suite.tasks):
            # an lm-eval task's metrics are known once lm-eval has loaded it, in the cell
            specs |= dict.fromkeys(s.tasks) if s.kind == "lm_eval" else {s.name: s}
        if task not in specs:
            raise UsageError(f"{where}: task {task!r} is not in the suite's tasks "
                             f"({', '.join(specs) or 'none'})")
        metrics = [m.metric for m in specs[task].metric_list] if specs[task] else [score]
        if score not in metrics:
            raise UsageError(f"{where}: task {task} has no metric {score!r} (its metrics: "
                             f"{', '.join(metrics)})")
        base = {v.name: v for v in suite.variants}[suite_baselines(suite)[variant.name]]
        for v in (variant, base):
            if not v.quality:
                raise UsageError(f"{where}: variant {v.name} is not scored (quality: false)")
    return make_rule(name, value, mode)


def check_rule(rule, where: str) -> tuple[str, float, str]:
    """One ``{criterion: number}`` rule, its form and figure checked (not its metric): the
    criterion's name, figure and mode. A quality criterion may add ``mode: relative|absolute``
    and may be 0 (no loss allowed); the others need a figure > 0."""
    names = [k for k in rule if k != "mode"] if isinstance(rule, dict) else []
    if len(names) != 1 or names[0] not in CRITERIA:
        raise UsageError(f"{where}: give one criterion of {', '.join(CRITERIA)}, e.g. "
                         f"{{non_inferior: 0.02}}, got {rule!r}")
    name = names[0]
    value, mode, quality = rule[name], rule.get("mode", "relative"), name in QUALITY_CRITERIA
    if "mode" in rule and not quality:
        raise UsageError(f"{where}: mode applies to the quality criteria "
                         f"({', '.join(QUALITY_CRITERIA)}) only, not to {name}")
    if mode not in QUALITY_MODES:
        raise UsageError(f"{where}: mode must be relative (x |baseline|) or absolute (metric "
                         f"units), got {mode!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or value < 0 or (value == 0 and not quality):
        raise UsageError(f"{where}: {name} must be a number {'>= 0' if quality else '> 0'}, "
                         f"got {value!r}")
    return name, float(value), mode


def make_rule(name: str, value: float, mode: str = "relative") -> dict[str, float | str]:
    """A checked rule as ``Suite.acceptance`` holds it: ``{criterion: number}``, plus
    ``mode: absolute`` where the allowance is absolute (relative, the default, is left out, so
    a suite's record reads as it did before modes existed)."""
    return {name: float(value)} | ({"mode": mode} if mode != "relative" else {})


def rule_parts(rule: dict) -> tuple[str, float, str]:
    """A parsed rule's criterion, figure and mode (``make_rule`` inverted)."""
    (name, value), = ((k, v) for k, v in rule.items() if k != "mode")
    return name, value, rule.get("mode", "relative")


def _parse_acceptance(data: dict, suite: Suite, source: str) -> dict:
    """``acceptance:`` as variant -> metric -> {criterion: number}, every entry checked."""
    raw = data.get("acceptance")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: acceptance must map variants to {{metric: {{criterion: "
                         f"number}}}}, got {raw!r}")
    variants = {v.name: v for v in suite.variants}
    baselines = suite_baselines(suite)
    out = {}
    for name, criteria in raw.items():
        where = f"{source}: acceptance.{name}"
        if name not in variants:
            raise UsageError(f"{where}: {name!r} is not a variant ({', '.join(variants)})")
        if baselines.get(name, name) == name:
            model = variants[name].model
            what = ("is the baseline" if name == suite.baseline_variant else
                    f"is the baseline of model {model}" if name in baselines else
                    f"has no baseline (no variant of model {model} without a recipe)")
            raise UsageError(f"{where}: variant {name} {what}; criteria compare a variant "
                             "with its baseline")
        if not isinstance(criteria, dict) or not criteria:
            raise UsageError(f"{where}: give metric: {{criterion: number}} entries, got "
                             f"{criteria!r}")
        out[name] = {str(m): _criterion(suite, variants[name], str(m), rule, f"{where}.{m}")
                     for m, rule in criteria.items()}
    return out



def parse_suite(data, source: str = "suite") -> Suite:
    """A validated Suite from parsed YAML; every problem is one UsageError naming ``source``."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(KEYS))}")
    variants = _variants(data, source)
    devices = _devices(data, source)
    from slimbench.bench.measure.environment import MAX_THREADS  # (it imports torch)

    latency = _latency(data, source)
    tasks = _tasks(data, source)
    threads = _number(data, "threads", int, source) or 0
    limit = _number(data, "task_limit", int, source)
    timeout = _number(data, "timeout", float, source, 900)
    names = [v.name for v in variants]
    base = data.get("baseline_variant", names[0])
    if base not in names:
        raise UsageError(f"{source}: baseline_variant {base!r} is not a variant ({names})")
    if not 0 <= threads <= MAX_THREADS or timeout <= 0 or (limit is not None and limit < 1):
        raise UsageError(f"{source}: threads in [0, {MAX_THREADS}], timeout > 0 and task_limit "
                         ">= 1 please")
    if not isinstance(data.get("name", "suite"), str):
        raise UsageError(f"{source}: name must be text, got {data['name']!r}")
    ppl_limit = _number(data, "perplexity_limit", int, source)
    if ppl_limit is not None and int(ppl_limit) < 1:
        raise UsageError(f"{source}: perplexity_limit must be >= 1")
    suite = Suite(str(data.get("name", "suite")), variants, devices, threads, latency,
                  tasks, None if limit is None else int(limit), timeout, base,
                  None if ppl_limit is None else int(ppl_limit), paired=_paired(data, source))
    suite = dataclasses.replace(suite, acceptance=_parse_acceptance(data, suite, source))
    _check_positions(variants, latency, source)  # last: it reads model configs
    return suite


def load_suite(path: Path, overrides: list[str] = ()) -> Suite:
    from slimbench.files import read_yaml

    data = read_yaml(path, "suite file")
    source = f"{path} with {' '.join(overrides)}" if overrides else str(path)
    return parse_suite(apply_overrides(data or {}, list(overrides)), source)

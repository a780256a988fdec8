"""Task definitions: YAML files (lm-eval-like) parsed into validated ``TaskSpec`` objects.

The built-in tasks live in ``tasks/defs/*.yaml`` (package data) and are registered by name in
``TASKS``; a user's own task file goes through the same parser (``load_task_file``), so the
built-ins are no more special than a user's YAML. Every problem in a file is a ``UsageError``
naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from slimbench.errors import UsageError
from slimbench.names import check_name
from slimbench.registry import Registry
from slimbench.tasks.fields import (
    integer,
    mapping,
    template_names,
    unknown_fields,
)
from slimbench.tasks.lmeval_spec import LmEvalSpec, is_lmeval, parse_lmeval
from slimbench.tasks.perplexity import PerplexityConfig
from slimbench.tasks.scorers import CHOICE_METRICS, METRICS, PERPLEXITY_METRICS
from slimbench.typecheck import misfit

DEFS_DIR = Path(__file__).resolve().parent / "defs"
KINDS = ("perplexity", "generate", "multiple_choice")
POSTPROCESS = ("identifier", "first_line", "paragraph", "strip")
# which metrics a task of each kind may name (generate: the rest)
KIND_METRICS = {"perplexity": PERPLEXITY_METRICS, "multiple_choice": CHOICE_METRICS}

_TOP = {"name", "version", "description", "kind", "dataset", "prompt", "target", "text",
        "generation", "perplexity", "metric_list", "limit", "choices", "multiple_choice"}
_GENERATION = {"greedy", "max_new_tokens", "stop", "postprocess", "batch_size"}
_DATASET = {"evalset", "path", "hf", "config", "split"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where rows come from: exactly one of an embedded set, a local JSONL file, or a Hugging
    Face dataset (``hf`` name or local directory, with ``config`` and ``split``)."""

    evalset: str | None = None
    path: str | None = None
    hf: str | None = None
    config: str | None = None
    split: str = "test"

    def describe(self) -> str:
        if self.evalset:
            return f"evalset:{self.evalset}"
        if self.path:
            return f"file:{self.path}"
        return f"hf:{self.hf}" + (f"/{self.config}" if self.config else "") + f":{self.split}"


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Greedy generation settings (the only decoding slimbench scores: it is deterministic)."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()
    postprocess: str = "first_line"
    batch_size: int = 8
    greedy: bool = True


@dataclasses.dataclass(frozen=True)
class ChoiceConfig:
    """How choices are scored.

    Attributes:
        target_delimiter: text between the prompt and each choice (lm-eval's, default " ").
        batch_size: (context, choice) pairs per forward pass.
    """

    target_delimiter: str = " "
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.target_delimiter, str):
            raise UsageError(f"target_delimiter must be text, got {self.target_delimiter!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise UsageError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric of a task, its direction, and its options (``use_stemmer`` for ROUGE...)."""

    metric: str
    higher_is_better: bool
    options: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task: where its rows come from, how to prompt/generate/score, which metrics.

    The first entry of ``metric_list`` is the headline metric (``metric``, ``value``). A
    multiple-choice task's ``choices`` is one template naming a row field that holds the list
    of choices (``"{choices}"``), or a tuple of templates, one per choice.
    """

    name: str
    version: str
    description: str
    kind: str
    dataset: DatasetSpec
    metric_list: tuple[MetricSpec, ...]
    prompt: str = "{prompt}"
    target: str = "{target}"
    text: str = "{text}"
    generation: GenerationConfig | None = None
    perplexity: PerplexityConfig = PerplexityConfig()
    choices: str | tuple[str, ...] = "{choices}"
    multiple_choice: ChoiceConfig | None = None
    limit: int | None = None
    source: str = ""  # the YAML file it came from

    # the pre-YAML attribute names, kept for code that reads them (scripts, reports)
    @property
    def metric(self) -> str:
        return self.metric_list[0].metric

    @property
    def higher_is_better(self) -> bool:
        return self.metric_list[0].higher_is_better

    @property
    def evalset(self) -> str | None:
        return self.dataset.evalset

    def to_dict(self) -> dict[str, Any]:
        """The task as run (``QualityScore.task_spec``): every field, options per metric."""
        d = dataclasses.asdict(self)
        d["metric_list"] = [{"metric": m.metric, "higher_is_better": m.higher_is_better}
                            | dict(m.options) for m in self.metric_list]
        return d


def _dataset(raw, where: str, base: Path | None) -> DatasetSpec:
    if raw is None:
        raise UsageError(f"{where}: missing dataset (evalset, path or hf)")
    if isinstance(raw, str):  # shorthand: an embedded set name
        raw = {"evalset": raw}
    raw = mapping(raw, f"{where}: dataset")
    unknown_fields(raw, _DATASET, f"{where}: dataset")
    sources = [k for k in ("evalset", "path", "hf") if raw.get(k)]
    if len(sources) != 1:
        raise UsageError(f"{where}: dataset needs exactly one of evalset, path, hf "
                         f"(got {', '.join(sources) or 'none'})")
    path = raw.get("path")
    if path is not None and base is not None and not Path(path).is_absolute():
        path = str((base / path).resolve())  # relative to the YAML file, not the cwd
    return DatasetSpec(evalset=raw.get("evalset"), path=path, hf=raw.get("hf"),
                       config=raw.get("config"), split=str(raw.get("split", "test")))


def _metrics(raw, kind: str, where: str) -> tuple[MetricSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{where}: metric_list must be a non-empty list")
    allowed = KIND_METRICS.get(kind, METRICS)
    out = []
    for i, m in enumerate(raw):
        m = mapping(m, f"{where}: metric_list[{i}]")
        name = m.get("metric")
        if name not in allowed:
            raise UsageError(f"{where}: unknown metric {name!r} for a {kind} task "
                             f"(known: {', '.join(sorted(allowed))})")
        option_names = set(allowed[name].options)
        unknown_fields(m, {"metric", "higher_is_better"} | option_names, f"{where}: metric {name}")
        hib = m.get("higher_is_better")
        if not isinstance(hib, bool):
            raise UsageError(f"{where}: metric {name} needs higher_is_better: true or false")
        options = tuple(sorted((k, v) for k, v in m.items() if k in option_names))
        out.append(MetricSpec(name, hib, options))
    return tuple(out)


def _generation(raw, where: str) -> GenerationConfig:
    """A generate task's ``generation`` section (greedy only: it is deterministic)."""
    g = mapping(raw, f"{where}: generation")
    unknown_fields(g, _GENERATION, f"{where}: generation")
    if "max_new_tokens" not in g:
        raise UsageError(f"{where}: generation needs max_new_tokens")
    mnt = g["max_new_tokens"]
    if isinstance(mnt, bool) or not isinstance(mnt, int) or mnt <= 0:
        raise UsageError(f"{where}: max_new_tokens must be positive, got {mnt!r}")
    if g.get("greedy", True) is not True:
        raise UsageError(f"{where}: only greedy decoding is supported (greedy: true)")
    stop = g.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise UsageError(f"{where}: stop must be a list of non-empty strings")
    post = g.get("postprocess", "first_line")
    if post not in POSTPROCESS:
        raise UsageError(f"{where}: postprocess must be one of {POSTPROCESS}, got {post!r}")
    return GenerationConfig(mnt, tuple(stop), post,
                            integer(g.get("batch_size", 8), f"{where}: batch_size"))


def _perplexity(raw, where: str) -> PerplexityConfig:
    """A perplexity task's ``perplexity`` section (windows, stride, BOS, batch)."""
    p = mapping(raw, f"{where}: perplexity")
    unknown_fields(p, {f.name for f in dataclasses.fields(PerplexityConfig)},
                   f"{where}: perplexity")
    hints = typing.get_type_hints(PerplexityConfig)
    for key, value in p.items():  # before __post_init__ compares values of the wrong type
        wanted = misfit(value, hints[key])
        if wanted:
            raise UsageError(f"{where}: perplexity.{key} must be {wanted}, got {value!r}")
    try:
        return PerplexityConfig(**p)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def _choice_templates(raw, where: str) -> str | tuple[str, ...]:
    """A multiple-choice task's ``choices``: ``"{field}"`` (a row field holding the list) or a
    list of at least two templates."""
    if isinstance(raw, str):
        if len(template_names(raw, f"{where}: choices")) != 1 or not (
                raw.startswith("{") and raw.endswith("}")):
            raise UsageError(f"{where}: choices must name one row field that holds the list "
                             f"of choices, like '{{choices}}', or be a list of templates; got "
                             f"{raw!r}")
        return raw
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(t, str) for t in raw):
        raise UsageError(f"{where}: choices must be '{{field}}' or a list of at least two "
                         f"templates, got {raw!r}")
    for t in raw:
        template_names(t, f"{where}: choices")
    return tuple(raw)


def _choice_config(raw, where: str) -> ChoiceConfig:
    """A multiple-choice task's ``multiple_choice`` section (target_delimiter, batch_size)."""
    c = mapping(raw, f"{where}: multiple_choice")
    unknown_fields(c, {f.name for f in dataclasses.fields(ChoiceConfig)},
                   f"{where}: multiple_choice")
    try:
        return ChoiceConfig(**c)
    except UsageError as e:
        raise UsageError(f"{where}: multiple_choice.{e}") from None


def parse_task(raw, source: str = "<task>", base: Path | None = None) -> TaskSpec:
    """Validate one parsed YAML document into a ``TaskSpec``.

    Args:
        raw: what ``yaml.safe_load`` returned.
        source: the file name, for messages.
        base: folder that relative dataset paths are resolved against.

    Raises:
        UsageError: the first problem found, naming the file and field.
    """
    raw = mapping(raw, f"task file {source}")
    unknown_fields(raw, _TOP, f"task file {source}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"task file {source}: needs a name")
    check_name(name, "task", f"task file {source}")  # it names metrics and result keys
    where = f"task {name} ({source})"
    kind = raw.get("kind", "generate")
    if kind not in KINDS:
        raise UsageError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
    dataset = _dataset(raw.get("dataset"), where, base)
    metric_list = _metrics(raw.get("metric_list"), kind, where)
    limit = raw.get("limit")
    if limit is not None:
        limit = integer(limit, f"{where}: limit")
    for key in ("prompt", "target", "text"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise UsageError(f"{where}: {key} must be a template string like '{{{key}}}'")
            template_names(raw[key], f"{where}: {key}")
    generation, perplexity, choice_config = None, PerplexityConfig(), None
    choices: str | tuple[str, ...] = "{choices}"
    if kind == "generate":
        generation = _generation(raw.get("generation"), where)
    elif kind == "multiple_choice":
        choices = _choice_templates(raw.get("choices", choices), where)
        choice_config = _choice_config(raw.get("multiple_choice", {}), where)
    else:
        perplexity = _perplexity(raw.get("perplexity", {}), where)
    return TaskSpec(name=name, version=str(raw.get("version", "0")),
                    description=str(raw.get("description", "")), kind=kind, dataset=dataset,
                    metric_list=metric_list, prompt=raw.get("prompt", "{prompt}"),
                    target=raw.get("target", "{target}"), text=raw.get("text", "{text}"),
                    generation=generation, perplexity=perplexity, choices=choices,
                    multiple_choice=choice_config, limit=limit, source=source)


def load_task_file(path: str | Path) -> TaskSpec:
    """Parse and validate one task YAML file (``yaml.safe_load``: no code runs)."""
    from slimbench.files import read_yaml

    path = Path(path)
    raw = read_yaml(path, "task file")
    return parse_task(raw, str(path), path.parent)


def is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def resolve_task(name_or_path):
    """A registered task by name, a task YAML file by path, or lm-eval tasks
    (``lm_eval:NAME,...`` or a suite's ``{lm_eval: {...}}`` entry: an ``LmEvalSpec``)."""
    if isinstance(name_or_path, TaskSpec | LmEvalSpec):
        return name_or_path
    if is_lmeval(name_or_path):
        return parse_lmeval(name_or_path)
    if is_task_file(name_or_path):
        return load_task_file(name_or_path)
    return TASKS.get(name_or_path)


TASKS: Registry[TaskSpec] = Registry("task")
for _file in sorted(DEFS_DIR.glob("*.yaml")):
    _spec = load_task_file(_file)
    _spec = dataclasses.replace(_spec, source=f"builtin:{_file.name}")
    TASKS.add(_spec.name, _spec, _spec.description)

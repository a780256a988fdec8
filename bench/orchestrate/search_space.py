"""The search space of ``slimbench search``: candidate recipes written compactly, expanded and
checked before any work.

    max_candidates: 500                                   # optional (default 500)
    candidates:
      - torch_dynamic_int8                                # a bare step: one candidate
      - [export_onnx, ort_dynamic_int8]                   # a chain: one candidate
      - [{export_onnx: {attention: [ops, fused]}}, ort_dynamic_int8]        # 2 candidates
      - [export_onnx, {ort_weight_int4: {algorithm: [rtn, hqq], block_size: [32, 128]}}]  # 4
      - {prune_unstructured: {sparsity: [0.3, 0.5]}}     # one step with parameters: 2

Each entry is one step (a name, or ``{name: {param: value}}``) or a chain of steps (a list),
written as a recipe's ``steps`` are (``compress/recipe.py``). A parameter whose value is a
list expands: one candidate per element, the cartesian product over every list of the chain,
the first list varying slowest (so the entries' order, then the parameters' order as written,
is the candidates' order). A parameter whose real value is a list is written as a list of
lists: ``{targets: [[a, b]]}`` is one candidate with ``targets: [a, b]``.

Every candidate is validated exactly as a suite variant's recipe is (``recipe.resolve``: the
step names, their parameters and values, the ``distill`` teacher filled in; ``check_chain``:
the model kinds, e.g. ``ort_dynamic_int8`` needs ``export_onnx`` before it) before anything is
built; every problem is one ``UsageError`` naming the source and the entry. Candidates that
expand to the same steps with the same configs (a default written out, a list repeating an
element, two entries overlapping) are kept once, the first; the rest are named ``c01``,
``c02``, ... in order. The built-in spaces per device are ``bench/suites/search-space-cpu.yaml``
and ``search-space-cuda.yaml`` (``default_space``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

from slimbench.errors import SlimbenchError, UsageError

MAX_CANDIDATES = 500
# a space whose raw expansion exceeds this many times max_candidates is refused before it is
# expanded (duplicates could not bring it under the limit in any reasonable space)
_EXPANSION_FACTOR = 20
KEYS = ("candidates", "max_candidates")
SUITES = Path(__file__).resolve().parent.parent / "suites"  # bench/suites


@dataclasses.dataclass(frozen=True)
class SpaceCandidate:
    """One candidate recipe of a space.

    Attributes:
        name: ``c01``, ``c02``, ... in space order (zero-padded to the width of the count).
        steps: the resolved recipe, as a suite ``Variant``'s: ``(step, params)`` pairs with
            the parameters as written (defaults not filled in; a ``distill`` step's
            ``teacher`` filled in as ``recipe.resolve`` does).
        entry: the 1-based index of the space entry it was expanded from.
    """

    name: str
    steps: tuple[tuple[str, dict], ...]
    entry: int = 0

    @property
    def label(self) -> str:
        """The recipe in one line: ``export_onnx > ort_weight_int4(algorithm=gptq, ...)``."""
        return chain_label(self.steps)

    def recipe(self) -> list:
        """The steps as a recipe file's ``steps`` list (a bare name where there are no
        parameters): ``{"model": M, "steps": candidate.recipe()}`` is a recipe file."""
        return [name if not params else {name: dict(params)} for name, params in self.steps]

    def to_dict(self) -> dict:
        return {"name": self.name, "entry": self.entry, "label": self.label,
                "recipe": self.recipe()}


def chain_label(steps) -> str:
    """``export_onnx > ort_weight_int4(algorithm=gptq, block_size=128)``."""
    def one(name, params) -> str:
        inner = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        return f"{name}({inner})" if inner else name

    return " > ".join(one(n, p) for n, p in steps)


def _short(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


# ---- parsing ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Axis:
    """One expanding parameter of an entry: step position, parameter name, its values."""

    step: int
    param: str
    values: tuple


@dataclasses.dataclass(frozen=True)
class _Entry:
    index: int  # 1-based
    steps: tuple[tuple[str, dict], ...]  # fixed parameters only
    axes: tuple[_Axis, ...]

    @property
    def size(self) -> int:
        return math.prod(len(a.values) for a in self.axes)

    def expand(self):
        """Each combination of the axes' values, in order: the chain's ``(step, params)``,
        the parameters in the order written."""
        for combo in itertools.product(*(a.values for a in self.axes)):
            chosen = {(a.step, a.param): v for a, v in zip(self.axes, combo, strict=True)}
            yield tuple((name, {k: chosen.get((i, k), v) for k, v in params.items()})
                        for i, (name, params) in enumerate(self.steps))


def _where(source: str, index: int) -> str:
    return f"{source}: candidates[{index}]"


def _step(item, where: str, position: int) -> tuple[str, dict]:
    """One step of an entry: a name or ``{name: {param: value}}`` (parameters as written)."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        (name, params), = item.items()
        if params is None:
            params = {}
        if not isinstance(name, str) or not isinstance(params, dict):
            raise UsageError(f"{where}: step {position} ({name}): parameters must be a "
                             f"mapping, e.g. {{{name}: {{param: [1, 2]}}}}, got {params!r}")
        return name, {str(k): v for k, v in params.items()}
    raise UsageError(f"{where}: step {position} must be a step name or {{name: {{param: "
                     f"value}}}}, got {item!r}")


def _entry(raw, index: int, source: str) -> _Entry:
    """One ``candidates:`` entry: its steps known, its chain's kinds checked by name, its
    lists turned into axes (parameters and values are checked per candidate)."""
    from slimbench.compress.steps import STEPS

    where = _where(source, index)
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise UsageError(f"{where}: an empty chain; give a step name or a list of steps")
    steps, axes = [], []
    for position, item in enumerate(items, 1):
        name, params = _step(item, where, position)
        try:
            STEPS.get(name)
        except SlimbenchError as e:
            raise UsageError(f"{where}: step {position}: {e}") from None
        fixed = {}
        for key, value in params.items():
            if isinstance(value, list):
                if not value:
                    raise UsageError(f"{where}: step {position} ({name}): parameter {key} is "
                                     "an empty list (a list expands to one candidate per "
                                     "element; write a list value as [[...]])")
                axes.append(_Axis(position - 1, key, tuple(value)))
                fixed[key] = value[0]
            else:
                fixed[key] = value
        steps.append((name, fixed))
    return _Entry(index, tuple(steps), tuple(axes))


def _entries(data, source: str) -> tuple[list[_Entry], int]:
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping with a 'candidates' list")
    unknown = sorted(map(str, set(data) - set(KEYS)))
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)} (known: "
                         f"{', '.join(KEYS)})")
    raw = data.get("candidates")
    if not isinstance(raw, list):
        raise UsageError(f"{source}: 'candidates' must be a list of steps or chains, e.g. "
                         f"[torch_dynamic_int8, [export_onnx, ort_dynamic_int8]], got {raw!r}")
    if not raw:
        raise UsageError(f"{source}: the space is empty: 'candidates' lists nothing")
    limit = data.get("max_candidates", MAX_CANDIDATES)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise UsageError(f"{source}: max_candidates must be an integer >= 1, got {limit!r}")
    return [_entry(item, i, source) for i, item in enumerate(raw, 1)], limit


def space_size(data, source: str = "space") -> int:
    """How many candidates the space's entries expand to before duplicates are dropped (its
    structure and step names checked; parameters are not): cheap, nothing resolved."""
    entries, _ = _entries(data, source)
    return sum(e.size for e in entries)


def _identity(steps) -> str:
    """What makes two candidates the same: every step's full config (defaults filled in)."""
    from slimbench.compress.steps import STEPS, make_config

    return json.dumps([[name, dataclasses.asdict(make_config(STEPS.get(name), params))]
                       for name, params in steps], sort_keys=True, default=repr)


def parse_space(data, source: str = "space", model: str = "reference",
                max_candidates: int | None = None) -> list[SpaceCandidate]:
    """The candidates of a parsed space YAML for ``model``, every one validated.

    Args:
        data: the parsed YAML (a mapping with ``candidates``).
        source: names the file in messages.
        model: the model spec the candidates compress (the chain's first kind, the
            ``distill`` teacher).
        max_candidates: the most candidates allowed after expansion (default: the file's
            ``max_candidates``, else 500).

    Raises:
        UsageError: one line naming ``source`` and the entry: a malformed entry, an unknown
            step or parameter, a bad value, a chain whose kinds do not fit, an empty space,
            or more candidates than allowed.
    """
    from slimbench.compress.recipe import Recipe, resolve
    from slimbench.compress.steps import check_chain

    entries, limit = _entries(data, source)
    limit = max_candidates if max_candidates is not None else limit
    for e in entries:  # the chain's kinds by name: once per entry, before any expansion
        try:
            check_chain(model, [name for name, _ in e.steps])
        except SlimbenchError as err:
            raise UsageError(f"{_where(source, e.index)}: {err}") from None
    raw = sum(e.size for e in entries)
    if raw > _EXPANSION_FACTOR * limit:
        raise UsageError(f"{source}: the space expands to {raw:,} candidates, more than "
                         f"max_candidates ({limit}); narrow its parameter lists or raise "
                         "max_candidates")
    seen: set[str] = set()
    kept: list[tuple[int, tuple]] = []
    for e in entries:
        for steps in e.expand():
            try:
                resolved = resolve(Recipe([(n, dict(p)) for n, p in steps]), model)
                key = _identity(resolved)
            except SlimbenchError as err:
                which = f" ({chain_label(steps)})" if e.size > 1 else ""
                raise UsageError(f"{_where(source, e.index)}{which}: {err}") from None
            if key not in seen:
                seen.add(key)
                kept.append((e.index, tuple((n, dict(p)) for n, p in resolved)))
    if len(kept) > limit:
        raise UsageError(f"{source}: the space expands to {len(kept):,} candidates, more than "
                         f"max_candidates ({limit}); narrow its parameter lists or raise "
                         "max_candidates")
    width = max(2, len(str(len(kept))))
    return [SpaceCandidate(f"c{i:0{width}d}", steps, index)
            for i, (index, steps) in enumerate(kept, 1)]


def load_space(path: str | Path, model: str = "reference",
               max_candidates: int | None = None) -> list[SpaceCandidate]:
    """``parse_space`` of a space file."""
    from slimbench.files import read_yaml

    return parse_space(read_yaml(Path(path), "space file"), str(path), model, max_candidates)


def default_space_path(device: str = "cpu") -> Path:
    """The built-in space file for ``device`` (``cpu``, ``cuda`` or ``cuda:N``)."""
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:")
                                                     and device[5:].isdigit())):
        raise UsageError(f"device {device!r}: use cpu, cuda or cuda:N")
    return SUITES / f"search-space-{'cpu' if device == 'cpu' else 'cuda'}.yaml"


def default_space(device: str = "cpu", model: str = "reference") -> list[SpaceCandidate]:
    """The built-in space for ``device``, for ``model``."""
    return load_space(default_space_path(device), model)

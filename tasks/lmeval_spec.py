"""lm-evaluation-harness tasks as slimbench task entries: what ``eval --task lm_eval:...`` and
a suite's ``{lm_eval: {...}}`` entry name. Parsing needs no lm-eval; running them does
(``tasks/lmeval_bridge.py``, extra ``slimbench[lmeval]``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from slimbench.errors import UsageError
from slimbench.tasks.fields import integer, mapping, unknown_fields

LMEVAL = "lm_eval"
_LMEVAL_KEYS = {"tasks", "include_path", "limit"}


@dataclasses.dataclass(frozen=True)
class LmEvalSpec:
    """lm-evaluation-harness tasks, run through the bridge (``tasks/lmeval_bridge.py``, extra
    ``slimbench[lmeval]``). Each lm-eval task (a group or tag: each of its tasks) becomes one
    task of the results, under lm-eval's name; its metrics are lm-eval's.

    Written ``lm_eval:NAME[,NAME...]`` (``eval --task``, with ``--include-path``) or, in a
    suite, ``{lm_eval: {tasks: [NAME, ...], include_path: DIR, limit: N}}``.
    """

    tasks: tuple[str, ...]
    include_path: str | None = None  # a folder of task YAML files (relative: to the cwd)
    limit: int | None = None
    kind: str = LMEVAL

    @property
    def name(self) -> str:
        return f"{LMEVAL}:{','.join(self.tasks)}"

    def to_dict(self) -> dict[str, Any]:
        """The entry as a task file writes it (``task_spec.lm_eval`` of its results)."""
        return {"tasks": list(self.tasks), "include_path": self.include_path,
                "limit": self.limit}


def is_lmeval(entry) -> bool:
    """Whether a task entry names lm-eval tasks (``lm_eval:...`` or ``{lm_eval: ...}``)."""
    return isinstance(entry, dict) or isinstance(entry, str) and entry.startswith(f"{LMEVAL}:")


def parse_lmeval(raw, where: str = "task") -> LmEvalSpec:
    """``lm_eval:a,b`` or ``{lm_eval: {tasks: [a, b], include_path: DIR, limit: N}}``."""
    if isinstance(raw, str):
        names = raw.removeprefix(f"{LMEVAL}:").split(",")
        body: dict = {"tasks": names}
    else:
        if not isinstance(raw, dict) or set(raw) != {LMEVAL}:
            raise UsageError(f"{where}: a task entry that is not a name must be {{lm_eval: "
                             f"{{tasks: [...], include_path: DIR, limit: N}}}}, got {raw!r}")
        body = mapping(raw[LMEVAL], f"{where}: lm_eval")
        unknown_fields(body, _LMEVAL_KEYS, f"{where}: lm_eval")
    names = body.get("tasks")
    if isinstance(names, str):
        names = names.split(",")
    if not isinstance(names, list) or not names or not all(
            isinstance(n, str) and n.strip() for n in names):
        raise UsageError(f"{where}: lm_eval needs task names, e.g. lm_eval:arc_easy,hellaswag "
                         f"or tasks: [arc_easy], got {names!r}")
    names = [n.strip() for n in names]
    if len(set(names)) != len(names):
        raise UsageError(f"{where}: lm_eval task names repeat: {', '.join(names)}")
    include = body.get("include_path")
    if include is not None and (not isinstance(include, str) or not include):
        raise UsageError(f"{where}: lm_eval include_path must be a folder path, got "
                         f"{include!r}")
    limit = body.get("limit")
    if limit is not None:
        limit = integer(limit, f"{where}: lm_eval limit")
    return LmEvalSpec(tuple(names), include, limit)

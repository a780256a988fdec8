"""A task's rows: from an embedded set, a local JSONL file, or a Hugging Face dataset.

Hugging Face datasets load through ``datasets.load_dataset`` only when the package is
installed; nothing here downloads on its own (a hub name works only where the data is
cached or the machine may download; a local directory of data files always works).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimbench.errors import UsageError
from slimbench.tasks.evalsets import load_evalset
from slimbench.tasks.fields import render, template_fields  # noqa: F401  (render: re-exported)
from slimbench.tasks.specs import DatasetSpec, TaskSpec
from slimbench.tasks.splits import check_split, select


def _jsonl(path: str) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"dataset file {p} does not exist")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"dataset file {p}: line {n} is not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UsageError(f"dataset file {p}: line {n} is not a JSON object")
        rows.append(row)
    return rows


def _huggingface(spec: DatasetSpec) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"dataset hf:{spec.hf} needs the `datasets` package "
                         "(pip install datasets)") from None
    try:
        ds = datasets.load_dataset(spec.hf, spec.config, split=spec.split)
    except Exception as e:  # noqa: BLE001 - any loader failure is the user's to fix
        raise UsageError(f"dataset hf:{spec.hf} could not be loaded: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    return [dict(row) for row in ds]


def load_examples(spec: TaskSpec, limit: int | None = None, split: str = "all",
                  offset: int = 0) -> list[dict[str, Any]]:
    """The task's rows (the first ``limit``, else the task's own ``limit``), each with an
    ``id``, checked to have every field the task's templates read.

    ``split`` (``tasks/splits.py``) keeps the rows of one side of the held-out split, chosen
    by id before ``offset`` and ``limit`` count: ``offset=16, limit=16`` of ``tune`` are the
    17th to 32nd tune rows, what a sequential screen scores at its second look.

    A row is the user's data: its fields are the dataset's own, read by name by the task's
    ``{field}`` templates (``str.format_map``), so rows stay mappings; ``id`` is the one field
    every row has (its position in the file where the file gives none).

    Raises:
        UsageError: missing file/package, no rows, or a template field the rows lack.
    """
    if limit is not None and limit <= 0:
        raise UsageError(f"limit must be positive, got {limit}")
    if offset < 0:
        raise UsageError(f"offset must be >= 0, got {offset}")
    check_split(split)
    limit = limit or spec.limit
    ds = spec.dataset
    if ds.evalset:
        rows = load_evalset(ds.evalset)
    elif ds.path:
        rows = _jsonl(ds.path)
    else:
        rows = _huggingface(ds)
    if not rows:
        raise UsageError(f"task {spec.name}: dataset {ds.describe()} has no rows")
    templates = [spec.text] if spec.kind == "perplexity" else [spec.prompt, spec.target]
    if spec.kind == "multiple_choice":
        templates += [spec.choices] if isinstance(spec.choices, str) else list(spec.choices)
    needed = {f for t in templates for f in template_fields(t)}
    missing = sorted(needed - set(rows[0]))
    if missing:
        raise UsageError(f"task {spec.name}: dataset {ds.describe()} rows have no field(s) "
                         f"{', '.join(missing)} (they have: {', '.join(sorted(rows[0]))})")
    rows = select([row if "id" in row else row | {"id": i} for i, row in enumerate(rows)],
                  split)[offset:]
    rows = rows[:limit] if limit else rows
    if not rows:
        raise UsageError(f"task {spec.name}: dataset {ds.describe()} has no {split} rows "
                         f"after the first {offset}")
    return rows

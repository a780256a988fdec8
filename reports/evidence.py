"""What a run holds beside its rows, for verdicts that pair: per cell, the environment
fingerprint its figures come from, the artifact it measured, and per task the saved
per-example outputs (``cells/<cell>.examples.jsonl``) that a paired quality test resamples.

A run directory has all of it; a ``results.json`` has the fingerprints, and the rest when its
run's ``cells/`` folder lies beside it (a committed baseline keeps both).
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any

from slimbench.reports.consistency import check_cell, check_rows, metric_options, read_records


@dataclasses.dataclass(frozen=True)
class TaskEvidence:
    """One task of one cell: its kind, each metric's options, and its examples file."""

    task: str
    kind: str
    options: dict[str, dict]
    path: Path

    @cached_property
    def examples(self) -> list[dict[str, Any]]:
        """The task's per-example records (the file holds every task of the cell), as
        ``read_records`` reads them."""
        return [r for r in read_records(self.path) if r.get("task") == self.task]


@dataclasses.dataclass(frozen=True)
class CellEvidence:
    """One cell: its environment fingerprint, the artifact it measured (path or model spec,
    with its content key and recipe) and its tasks' examples."""

    fingerprint: dict | None
    artifact: str | None = None
    tasks: dict[str, TaskEvidence] = dataclasses.field(default_factory=dict)
    content_key: str | None = None
    recipe: list[str] = dataclasses.field(default_factory=list)


def _task_evidence(cells_dir: Path, task: str, score) -> TaskEvidence | None:
    if not score.examples_file or not (cells_dir / score.examples_file).is_file():
        return None
    spec = score.task_spec or {}
    return TaskEvidence(task, spec.get("kind", "generate"), metric_options(spec),
                        cells_dir / score.examples_file)


def load_evidence(path: Path) -> dict[str, CellEvidence]:
    """Per cell id, what ``path`` (a run directory or a results file) holds beside its rows,
    checked first (``consistency.py``): every cell's figures against its examples, and a
    results file's rows against its cells.

    Raises:
        UsageError: the run is inconsistent (the file and the figure named).
    """
    from slimbench.files import read_json
    from slimbench.fingerprint import fingerprint
    from slimbench.reports.table import load_cells, load_results

    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    recorded = {}
    results = path / "results.json" if path.is_dir() else path
    if results.is_file():
        recorded = (read_json(results, "results file") or {}).get("environments") or {}
    out = {cell: CellEvidence(fp) for cell, fp in recorded.items()}
    if not (run_dir / "cells").is_dir():
        return out
    cells = load_cells(run_dir)
    for res in cells:
        check_cell(res, run_dir / "cells")
    if results.is_file():
        check_rows(load_results(results).rows, cells, results)
    for res in cells:
        if res.status != "ok":
            continue
        tasks = {task: ev for task, score in res.quality.items()
                 if (ev := _task_evidence(run_dir / "cells", task, score))}
        fp = fingerprint(res.environment, res.cell.backend) if res.environment else \
            recorded.get(res.cell.id)
        out[res.cell.id] = CellEvidence(fp, res.cell.artifact, tasks, res.cell.content_key,
                                        list(res.cell.recipe))
    return out

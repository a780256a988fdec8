"""Cell results -> one tidy table: a row per (cell, metric) with value, interval and direction.

Everything downstream (CSV, HTML, the gate) reads these rows, so a metric means the same thing
everywhere. A results file (``results.json``) holds the rows of a run and the suite that made
them (``suite``: what ``suite.json`` holds, so the gate can tell whether two runs measured the
same thing; null in files written before it was added); a run directory holds one JSON per
cell under ``cells/`` and its ``suite.json``; both load with ``load_results``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

from slimbench.errors import UsageError
from slimbench.files import read_json
from slimbench.reports.schema import (
    RESULTS_FORMAT,
    SUITE_SHAPE,
    CellResult,
    Memory,
    ResultsFile,
    Row,
    load_document,
    suite_cell_ids,
    valid_suite,
)

log = logging.getLogger(__name__)

COLUMNS = tuple(f.name for f in dataclasses.fields(Row))


def _row(cell, kind: str, metric: str, value, ci=None, higher_is_better=False,
         unit="") -> dict:
    return Row(cell=cell.id, variant=cell.variant, backend=cell.backend, device=cell.device,
               kind=kind, metric=metric, value=None if value is None else float(value),
               ci_low=None if ci is None else float(ci[0]),
               ci_high=None if ci is None else float(ci[1]),
               higher_is_better=bool(higher_is_better), unit=unit).to_dict()


def as_cell(result: CellResult | dict) -> CellResult:
    """``result`` typed (a mapping is checked against the schema first)."""
    return result if isinstance(result, CellResult) else load_document(result, "cell result",
                                                                       "cell")


def rows_from_cell(result: CellResult | dict) -> list[dict]:
    """The tidy rows of one cell result (none for a failed cell: its metrics are missing).

    Every measurement of every scenario is a row named ``<measurement>@<scenario tag>``; every
    memory figure present (the schema's ``Memory``) is a row; every metric of every task is a
    row named ``<task>.<metric>``.
    """
    res = as_cell(result)
    if res.status != "ok":
        return []
    cell, rows = res.cell, []
    for s in res.latency.scenarios if res.latency else []:
        rows += [_row(cell, "latency", f"{m.name}@{s.tag}", m.median, m.ci95,
                      m.higher_is_better, m.unit) for m in s.measurements]
    for key in (f.name for f in dataclasses.fields(Memory)) if res.memory else ():
        value = getattr(res.memory, key)
        if value is not None:
            rows.append(_row(cell, Memory.kind(key), key, value, unit=Memory.unit(key)))
    for task, score in res.quality.items():
        rows += [_row(cell, "quality", f"{task}.{metric}", m.value, m.ci95, m.higher_is_better)
                 for metric, m in score.metrics.items()]
    return rows


def cell_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """(the cell files of a run directory, the strays): with a ``suite.json``, only the files of
    the cells its suite asks for are cells; any other ``cells/*.json`` (copied in, left from
    another suite) is a stray, never merged into the results."""
    run_dir = Path(run_dir)
    paths = sorted((run_dir / "cells").glob("*.json"))
    saved = run_dir / "suite.json"
    suite = _check_suite(read_json(saved, "suite file"), saved) if saved.is_file() else None
    if not suite or not suite.get("devices"):  # a hand-made suite.json: no cells to go by
        return paths, []
    ids = suite_cell_ids(suite)
    return [p for p in paths if p.stem in ids], [p for p in paths if p.stem not in ids]


def load_cells(run_dir: Path) -> list[CellResult]:
    """Every cell result of a run directory (``cells/*.json``, strays left out with a
    warning: ``cell_files``), checked against the schema.

    Raises:
        UsageError: a malformed cell file, named with the field that does not fit.
    """
    paths, strays = cell_files(run_dir)
    if strays:
        log.warning("%s: ignoring %d file(s) in cells/ that are not cells of its suite: %s",
                    run_dir, len(strays), ", ".join(p.name for p in strays))
    return [load_document(read_json(path, "cell result"), path, "cell") for path in paths]


def load_rows(path: Path) -> list[dict]:
    """Rows from a run directory (``cells/*.json``) or a results file (``results.json``).

    Raises:
        UsageError: nothing there, or not a slimbench results file.
    """
    return load_results(path)[0]


def load_results(path: Path) -> tuple[list[dict], dict | None]:
    """Rows and the suite that made them (None where the file predates that record), from a
    run directory or a results file. Every row is checked here, so that a malformed file
    is one clear error instead of a traceback deep in the gate.

    Raises:
        UsageError: nothing there, not a slimbench results file, or a malformed row or suite.
    """
    path = Path(path)
    if path.is_dir():
        saved = path / "suite.json"
        suite = _check_suite(read_json(saved, "suite file"), saved) if saved.is_file() else None
        if (path / "results.json").is_file():
            rows, recorded = load_results(path / "results.json")
            return rows, recorded if recorded is not None else suite
        if not (path / "cells").is_dir():
            raise UsageError(f"{path} is not a slimbench run directory (no cells/ folder)")
        return [r for cell in load_cells(path) for r in rows_from_cell(cell)], suite
    data = read_json(path, "results file")
    if not isinstance(data, dict) or data.get("slimbench_results") != RESULTS_FORMAT \
            or not isinstance(data.get("rows"), list):
        raise UsageError(f"{path} is not a slimbench results file (expected "
                         f'{{"slimbench_results": {RESULTS_FORMAT}, "rows": [...]}})')
    results: ResultsFile = load_document(data, path, "results")
    return [r.to_dict() for r in results.rows], results.suite


def _check_suite(suite, source: Path) -> dict | None:
    """The recorded suite (a mapping whose variants are named mappings), or None."""
    if suite is not None and not valid_suite(suite):
        raise UsageError(f"{source}: suite must be {SUITE_SHAPE}")
    return suite


def is_finite(value) -> bool:
    """A number the gate can compare (not None, NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def to_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=list(COLUMNS))

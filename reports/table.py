"""Cell results -> one tidy table: a row per (cell, metric) with value, interval and direction.

Everything downstream (CSV, HTML, the gate) reads these rows, so a metric means the same thing
everywhere. A results file (``results.json``) holds the rows of a run and the suite that made
them (``suite``: what ``suite.json`` holds, so the gate can tell whether two runs measured the
same thing; null in files written before it was added); a run directory holds one JSON per
cell under ``cells/`` and its ``suite.json``; both load with ``load_results``.

The wide summary (``summary_frame``: a column per metric, deltas against each variant's baseline,
``baselines_for``) is built here too, for ``output.py``'s summary.csv and ``html.py``'s table.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

from slimbench.errors import UsageError
from slimbench.files import read_json
from slimbench.schema import (
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
         unit="") -> Row:
    return Row(cell=cell.id, variant=cell.variant, backend=cell.backend, device=cell.device,
               kind=kind, metric=metric, value=None if value is None else float(value),
               ci_low=None if ci is None else float(ci[0]),
               ci_high=None if ci is None else float(ci[1]),
               higher_is_better=bool(higher_is_better), unit=unit)


def as_cell(result: CellResult | dict) -> CellResult:
    """``result`` typed (a mapping is checked against the schema first)."""
    return result if isinstance(result, CellResult) else load_document(result, "cell result",
                                                                       "cell")


def rows_from_cell(result: CellResult | dict) -> list[Row]:
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


def load_rows(path: Path) -> list[Row]:
    """Rows from a run directory (``cells/*.json``) or a results file (``results.json``).

    Raises:
        UsageError: nothing there, or not a slimbench results file.
    """
    return load_results(path).rows


def load_results(path: Path) -> ResultsFile:
    """Rows and the suite that made them (``suite``: None where the file predates that
    record), from a run directory or a results file; the environments a results file
    recorded (none for a run directory without one). Every row is checked here, so that a
    malformed file is one clear error instead of a traceback deep in the gate.

    Raises:
        UsageError: nothing there, not a slimbench results file, or a malformed row or suite.
    """
    path = Path(path)
    if path.is_dir():
        saved = path / "suite.json"
        suite = _check_suite(read_json(saved, "suite file"), saved) if saved.is_file() else None
        if (path / "results.json").is_file():
            results = load_results(path / "results.json")
            return results if results.suite is not None else \
                dataclasses.replace(results, suite=suite)
        if not (path / "cells").is_dir():
            raise UsageError(f"{path} is not a slimbench run directory (no cells/ folder)")
        return ResultsFile(rows=[r for cell in load_cells(path) for r in rows_from_cell(cell)],
                           suite=suite)
    data = read_json(path, "results file")
    if not isinstance(data, dict) or data.get("slimbench_results") != RESULTS_FORMAT \
            or not isinstance(data.get("rows"), list):
        raise UsageError(f"{path} is not a slimbench results file (expected "
                         f'{{"slimbench_results": {RESULTS_FORMAT}, "rows": [...]}})')
    return load_document(data, path, "results")


def _check_suite(suite, source: Path) -> dict | None:
    """The recorded suite (a mapping whose variants are named mappings), or None."""
    if suite is not None and not valid_suite(suite):
        raise UsageError(f"{source}: suite must be {SUITE_SHAPE}")
    return suite


def is_finite(value) -> bool:
    """A number the gate can compare (not None, NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def to_frame(rows: list[Row]):
    """The rows as a pandas DataFrame, one column per ``Row`` field."""
    import pandas as pd

    return pd.DataFrame([r.to_dict() for r in rows], columns=list(COLUMNS))


def baselines_for(cells: list[CellResult | dict], baseline_variant: str | None) -> dict[str, str]:
    """Each variant's baseline: the suite's baseline variant for variants of the same input
    model; for another model (gpt2 shapes next to the reference), that model's variant without
    a recipe, if the suite has one. A delta against another model's baseline would mean
    nothing, so such variants get none."""
    heads = [as_cell(c).cell for c in cells]
    model = {h.variant: h.model for h in heads}
    plain = {}
    for h in heads:  # the first recipe-less variant of each model
        if not h.recipe:
            plain.setdefault(h.model, h.variant)
    if baseline_variant in model:
        plain[model[baseline_variant]] = baseline_variant
    return {v: plain[m] for v, m in model.items() if m in plain}


def summary_frame(rows: list[Row], baselines: dict[str, str],
                  fingerprints: dict[str, dict | None] | None = None):
    """Wide table: one row per (variant, backend, device), one column per metric, plus
    ``Δ <metric>`` columns relative to each variant's baseline (``baselines_for``) on the same
    device.

    ``fingerprints``: per cell id, its environment fingerprint (``slimbench/fingerprint.py``).
    Where the variant's cell and its baseline's were measured in different environments (a
    run spread over unlike nodes, ``--executor ray``), latency and memory get no Δ: as in the
    gate, a figure from another machine is not a change."""
    import pandas as pd

    from slimbench.fingerprint import differences

    frame = to_frame(rows)
    if frame.empty:
        return frame
    wide = frame.pivot_table(index=["variant", "backend", "device"], columns="metric",
                             values="value", aggfunc="first")
    by_device = wide.droplevel("backend")
    fingerprints = fingerprints or {}
    env = {(r.variant, r.device): fingerprints.get(r.cell) for r in rows}
    kind = {r.metric: r.kind for r in rows}

    def unlike(variant: str, device: str) -> bool:
        a, b = env.get((variant, device)), env.get((baselines[variant], device))
        return a is not None and b is not None and bool(differences(a, b))

    for metric in list(wide.columns):
        machine = kind[metric] in ("latency", "memory")
        ref = [by_device[metric].get((baselines[v], d))
               if v in baselines and not (machine and unlike(v, d)) else None
               for v, _, d in wide.index]
        ref = pd.Series(ref, index=wide.index, dtype=float)
        wide[f"Δ {metric}"] = (wide[metric] - ref) / ref.where(ref != 0)
    return wide.reset_index()

"""Write a run's tables: results.json (rows and the suite), results.csv (long/tidy),
summary.csv (wide, with relative deltas against each variant's baseline), and report.html.

The tables themselves (``baselines_for``, ``summary_frame``) are computed in ``table.py``, which
``html.py`` reads too; they are importable from here as before."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from slimbench import atomic
from slimbench.files import read_json
from slimbench.reports.html import render_html
from slimbench.reports.table import (
    baselines_for,
    load_cells,
    rows_from_cell,
    summary_frame,
    to_frame,
)
from slimbench.schema import ResultsFile


@dataclasses.dataclass(frozen=True)
class Written:
    """What ``write_tables`` / ``write_report`` wrote.

    Attributes:
        cells: cell results read.
        rows: results rows written.
        failed: ids of the failed cells.
        skipped: ids of the skipped cells.
        html: the report's path (``write_report``), or None (tables only).
    """

    cells: int
    rows: int
    failed: list[str]
    skipped: list[str]
    html: Path | None = None


def write_tables(run_dir: Path, baseline_variant: str | None = None) -> Written:
    """``results.json``, ``results.csv`` and ``summary.csv`` of a run directory, from its
    cell JSON."""
    run_dir = Path(run_dir)
    cells = load_cells(run_dir)
    rows = [r for cell in cells for r in rows_from_cell(cell)]
    baselines = baselines_for(cells, baseline_variant)
    # the suite travels with the rows, so a gate can check that two runs measured the same thing
    suite = read_json(run_dir / "suite.json", "suite file") \
        if (run_dir / "suite.json").is_file() else None
    from slimbench.fingerprint import fingerprint

    environments = {c.cell.id: fingerprint(c.environment, c.cell.backend) for c in cells
                    if c.status == "ok"}
    results = ResultsFile(rows=rows, suite=suite, environments=environments)
    atomic.write_json(run_dir / "results.json", results.to_dict())
    atomic.write_text(run_dir / "results.csv", to_frame(rows).to_csv(index=False))
    atomic.write_text(run_dir / "summary.csv",
                      summary_frame(rows, baselines, environments).to_csv(index=False))
    return Written(cells=len(cells), rows=len(rows),
                   failed=[c.cell.id for c in cells if c.status == "failed"],
                   skipped=[c.cell.id for c in cells if c.status == "skipped"])


def write_report(run_dir: Path, baseline_variant: str | None) -> Written:
    """Tables and ``report.html`` of a run directory, from its cell JSON."""
    written = write_tables(run_dir, baseline_variant)
    return dataclasses.replace(
        written, html=render_html(run_dir, Path(run_dir).name, baseline_variant))

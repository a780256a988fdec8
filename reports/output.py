"""Write a run's tables: results.json (rows and the suite), results.csv (long/tidy),
summary.csv (wide, with relative deltas against each variant's baseline), and report.html.

The tables themselves (``baselines_for``, ``summary_frame``) are computed in ``table.py``, which
``html.py`` reads too; they are importable from here as before."""

from __future__ import annotations

from pathlib import Path

from slimbench import atomic
from slimbench.files import read_json
from slimbench.reports.html import render_html
from slimbench.schema import ResultsFile, Row
from slimbench.reports.table import (
    baselines_for,
    load_cells,
    rows_from_cell,
    summary_frame,
    to_frame,
)


def write_tables(run_dir: Path, baseline_variant: str | None = None) -> dict:
    run_dir = Path(run_dir)
    cells = load_cells(run_dir)
    rows = [r for cell in cells for r in rows_from_cell(cell)]
    baselines = baselines_for(cells, baseline_variant)
    # the suite travels with the rows, so a gate can check that two runs measured the same thing
    suite = read_json(run_dir / "suite.json", "suite file") \
        if (run_dir / "suite.json").is_file() else None
    from slimbench.fingerprint import fingerprint

    environments = {c.cell.id: fingerprint(c.environment) for c in cells if c.status == "ok"}
    results = ResultsFile(rows=[Row(**r) for r in rows], suite=suite,
                          environments=environments)
    atomic.write_json(run_dir / "results.json", results.to_dict())
    atomic.write_text(run_dir / "results.csv", to_frame(rows).to_csv(index=False))
    atomic.write_text(run_dir / "summary.csv",
                      summary_frame(rows, baselines, environments).to_csv(index=False))
    return {"cells": len(cells), "rows": len(rows),
            "failed": [c.cell.id for c in cells if c.status == "failed"],
            "skipped": [c.cell.id for c in cells if c.status == "skipped"]}


def write_report(run_dir: Path, baseline_variant: str | None) -> dict:
    """Tables and ``report.html`` of a run directory, from its cell JSON."""
    summary = write_tables(run_dir, baseline_variant)
    return summary | {"html": render_html(run_dir, Path(run_dir).name, baseline_variant)}

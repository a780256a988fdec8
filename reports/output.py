"""Write a run's tables: results.json (rows), results.csv (long/tidy), summary.csv (wide, with
relative deltas against the baseline variant)."""

from __future__ import annotations

from pathlib import Path

from slimbench import atomic
from slimbench.reports.table import RESULTS_FORMAT, load_cells, rows_from_cell, to_frame


def summary_frame(rows: list[dict], baseline_variant: str | None):
    """Wide table: one row per (variant, backend, device), one column per metric, plus
    ``Δ <metric>`` columns relative to the baseline variant on the same device."""
    frame = to_frame(rows)
    if frame.empty:
        return frame
    wide = frame.pivot_table(index=["variant", "backend", "device"], columns="metric",
                             values="value", aggfunc="first")
    if baseline_variant is not None and baseline_variant in wide.index.get_level_values(0):
        base = wide.xs(baseline_variant, level="variant").droplevel("backend")
        for metric in list(wide.columns):
            ref = wide.index.get_level_values("device").map(base[metric].to_dict())
            wide[f"Δ {metric}"] = (wide[metric] - ref) / ref.where(ref != 0)
    return wide.reset_index()


def write_tables(run_dir: Path, baseline_variant: str | None = None) -> dict:
    run_dir = Path(run_dir)
    cells = load_cells(run_dir)
    rows = [r for cell in cells for r in rows_from_cell(cell)]
    atomic.write_json(run_dir / "results.json", {"slimbench_results": RESULTS_FORMAT,
                                                 "rows": rows})
    atomic.write_text(run_dir / "results.csv", to_frame(rows).to_csv(index=False))
    atomic.write_text(run_dir / "summary.csv",
                      summary_frame(rows, baseline_variant).to_csv(index=False))
    return {"cells": len(cells), "rows": len(rows),
            "failed": [c["cell"]["id"] for c in cells if c.get("status") == "failed"],
            "skipped": [c["cell"]["id"] for c in cells if c.get("status") == "skipped"]}

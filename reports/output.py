"""Write a run's tables: results.json (rows and the suite), results.csv (long/tidy),
summary.csv (wide, with relative deltas against each variant's baseline)."""

from __future__ import annotations

from pathlib import Path

from slimbench import atomic
from slimbench.files import read_json
from slimbench.reports.schema import CellResult, ResultsFile, Row
from slimbench.reports.table import as_cell, load_cells, rows_from_cell, to_frame


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


def summary_frame(rows: list[dict], baselines: dict[str, str],
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
    env = {(r["variant"], r["device"]): fingerprints.get(r["cell"]) for r in rows}
    kind = {r["metric"]: r["kind"] for r in rows}

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
    from slimbench.reports.html import render_html

    summary = write_tables(run_dir, baseline_variant)
    return summary | {"html": render_html(run_dir, Path(run_dir).name, baseline_variant)}

"""Cell results -> one tidy table: a row per (cell, metric) with value, interval and direction.

Everything downstream (CSV, HTML, the gate) reads these rows, so a metric means the same thing
everywhere. A results file (``results.json``) holds the rows of a run and the suite that made
them (``suite``: what ``suite.json`` holds, so the gate can tell whether two runs measured the
same thing; null in files written before it was added); a run directory holds one JSON per
cell under ``cells/`` and its ``suite.json``; both load with ``load_results``.
"""

from __future__ import annotations

import math
from pathlib import Path

from slimbench.errors import UsageError
from slimbench.files import read_json

RESULTS_FORMAT = 1
COLUMNS = ("cell", "variant", "backend", "device", "kind", "metric", "value", "ci_low",
           "ci_high", "higher_is_better", "unit")
MEMORY_METRICS = {"peak_rss_bytes": "B", "model_bytes_on_disk": "B", "parameters": "",
                  "nonzero_parameters": "", "cuda_max_allocated_bytes": "B",
                  "gpu_process_bytes": "B"}


def _row(cell: dict, kind: str, metric: str, value, ci=None, higher_is_better=False,
         unit="") -> dict:
    return {"cell": cell["id"], "variant": cell.get("variant", cell["id"]),
            "backend": cell.get("backend"), "device": cell.get("device"), "kind": kind,
            "metric": metric, "value": None if value is None else float(value),
            "ci_low": None if ci is None else float(ci[0]),
            "ci_high": None if ci is None else float(ci[1]),
            "higher_is_better": bool(higher_is_better), "unit": unit}


def _latency_rows(cell: dict, latency: dict) -> list[dict]:
    rows = []
    for s in latency.get("scenarios", []):
        if s["scenario"] == "prefill":
            name = f"prefill_ms@{s['seq_len']}" + (f"x{s['batch']}" if s["batch"] > 1 else "")
            rows.append(_row(cell, "latency", name, s["ms"]["median"], s["ms"]["median_ci95"],
                             unit="ms"))
        elif s["scenario"] == "decode":
            st = s["ms_per_token"]
            rows.append(_row(cell, "latency", f"decode_ms_per_token@{s['context']}",
                             st["median"], st["median_ci95"], unit="ms"))
        elif s["scenario"] == "generate":
            for key, hib, unit in (("ttft_ms", False, "ms"), ("tpot_ms", False, "ms"),
                                   ("tokens_per_s", True, "tok/s")):
                st = s[key]
                rows.append(_row(cell, "latency", f"{key}@{s['prompt_len']}", st["median"],
                                 st["median_ci95"], hib, unit))
    for key, unit in MEMORY_METRICS.items():
        value = latency.get("memory", {}).get(key)
        if value is not None:
            rows.append(_row(cell, "size" if "param" in key or "disk" in key else "memory",
                             key, value, unit=unit))
    return rows


def rows_from_cell(result: dict) -> list[dict]:
    """The tidy rows of one cell result (none for a failed cell: its metrics are missing)."""
    cell = result["cell"]
    if result.get("status") != "ok":
        return []
    rows = _latency_rows(cell, result["latency"]) if result.get("latency") else []
    for task, res in (result.get("quality") or {}).items():
        for metric, m in res["metrics"].items():
            rows.append(_row(cell, "quality", f"{task}.{metric}", m["value"], m.get("ci95"),
                             m["higher_is_better"]))
    return rows


def load_cells(run_dir: Path) -> list[dict]:
    cells = []
    for path in sorted((Path(run_dir) / "cells").glob("*.json")):
        cells.append(read_json(path, "cell result"))
    return cells


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
        rows = []
        for cell in load_cells(path):
            try:
                rows += rows_from_cell(cell)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise UsageError(f"{path}/cells: a malformed cell result "
                                 f"({type(e).__name__}: {e})") from None
        return _check_rows(rows, path / "cells"), suite
    data = read_json(path, "results file")
    if not isinstance(data, dict) or data.get("slimbench_results") != RESULTS_FORMAT \
            or not isinstance(data.get("rows"), list):
        raise UsageError(f"{path} is not a slimbench results file (expected "
                         f'{{"slimbench_results": {RESULTS_FORMAT}, "rows": [...]}})')
    return _check_rows(data["rows"], path), _check_suite(data.get("suite"), path)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_rows(rows: list, source: Path) -> list[dict]:
    """``rows`` unchanged, or a UsageError naming the file, the row and the field. Non-finite
    numbers pass here: the gate judges them (a NaN candidate fails its check)."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UsageError(f"{source}: rows[{i}] must be a mapping, got {row!r:.60}")
        if set(COLUMNS) - set(row):
            raise UsageError(f"{source}: rows[{i}] lacks columns {sorted(set(COLUMNS) - set(row))}")
        problem = _field_problem(row)
        if problem:
            field, want = problem
            raise UsageError(f"{source}: rows[{i}] ({row['variant']} {row['metric']}): {field} "
                             f"must be {want}, got {row[field]!r:.60}")
    return rows


def _field_problem(row: dict) -> tuple[str, str] | None:
    """(field, what it must be) for the first malformed field of a row, or None."""
    for key in ("variant", "kind", "metric"):
        if not isinstance(row[key], str):
            return key, "text"
    for key in ("cell", "backend", "device", "unit"):
        if row[key] is not None and not isinstance(row[key], str):
            return key, "text or null"
    for key in ("value", "ci_low", "ci_high"):
        if row[key] is not None and not _is_number(row[key]):
            return key, "a number or null"
    if not isinstance(row["higher_is_better"], bool):
        return "higher_is_better", "true or false"
    return None


def _check_suite(suite, source: Path) -> dict | None:
    """The recorded suite (a mapping whose variants are named mappings), or None."""
    if suite is None:
        return None
    variants = suite.get("variants", []) if isinstance(suite, dict) else None
    if not isinstance(variants, list) or not all(
            isinstance(v, dict) and isinstance(v.get("name"), str) for v in variants):
        raise UsageError(f"{source}: suite must be a mapping as in suite.json, with variants a "
                         "list of {name, model, recipe, quality}")
    return suite


def is_finite(value) -> bool:
    """A number the gate can compare (not None, NaN or infinite)."""
    return _is_number(value) and math.isfinite(value)


def to_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=list(COLUMNS))

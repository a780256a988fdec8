"""Cell results -> one tidy table: a row per (cell, metric) with value, interval and direction.

Everything downstream (CSV, HTML, the gate) reads these rows, so a metric means the same thing
everywhere. A results file (``results.json``) holds the rows of a run; a run directory holds
one JSON per cell under ``cells/``; both load with ``load_rows``.
"""

from __future__ import annotations

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
    path = Path(path)
    if path.is_dir():
        if (path / "results.json").is_file():
            return load_rows(path / "results.json")
        if not (path / "cells").is_dir():
            raise UsageError(f"{path} is not a slimbench run directory (no cells/ folder)")
        return [r for cell in load_cells(path) for r in rows_from_cell(cell)]
    data = read_json(path, "results file")
    if not isinstance(data, dict) or data.get("slimbench_results") != RESULTS_FORMAT \
            or not isinstance(data.get("rows"), list):
        raise UsageError(f"{path} is not a slimbench results file (expected "
                         f'{{"slimbench_results": {RESULTS_FORMAT}, "rows": [...]}})')
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, dict) or set(COLUMNS) - set(row):
            raise UsageError(f"{path}: row {i} lacks columns "
                             f"{sorted(set(COLUMNS) - set(row or {}))}")
    return data["rows"]


def to_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=list(COLUMNS))

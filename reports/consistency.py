"""Do a run's files back the figures they report?

A cell's quality figures are aggregates of its per-example outputs
(``cells/<cell>.examples.jsonl``), and the gate's paired tests resample those outputs. A
results file, a cell file or an examples file edited by hand, truncated by a full disk or
copied from another run would otherwise let the gate print a paired verdict ("identical on
all 3 paired examples") beside a figure that those examples do not give. So before anything
reads them as evidence:

- the examples file must be the one the cell wrote (its sha256, recorded in the cell);
- every record must be a measurement (``tasks.paired.check_records``: types, ranges, finite);
- each task must hold as many examples as its score says, and each metric re-aggregated from
  them must equal the recorded value within rounding (``REL_TOL``);
- a results file's rows must be its cells' rows.

The gate, ``slimbench validate`` and ``run --resume`` run these checks; a run that fails them is
refused as inconsistent, naming the file and the figure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from slimbench.digest import sha256_file
from slimbench.errors import UsageError
from slimbench.schema import CellResult, QualityScore, Row

# A figure re-aggregated from its examples differs from the recorded one by summation order at
# most (a few ulps of a sum over thousands of tokens): far below 1e-6. An edited figure, a
# truncated file or another run's file moves it by more.
REL_TOL = 1e-6
ABS_TOL = 1e-9


def metric_options(spec: dict | None) -> dict[str, dict]:
    """Each metric's options as a task spec's ``metric_list`` recorded them (none from a list
    that is not one: the metric's defaults then apply, and a figure they do not give is
    caught by the re-aggregation)."""
    entries = (spec or {}).get("metric_list")
    return {m["metric"]: {k: v for k, v in m.items() if k not in ("metric", "higher_is_better")}
            for m in (entries if isinstance(entries, list) else [])
            if isinstance(m, dict) and isinstance(m.get("metric"), str)}


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON-lines records of an examples file: JSON objects as written, each with its
    ``task`` and ``id``, the rest of their keys depending on the task's kind (what
    ``tasks.paired.check_records`` checks before any figure is read from them).

    Raises:
        UsageError: unreadable, or a line that is not a JSON object.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UsageError(f"{path}: cannot read the per-example outputs ({e})") from None
    bad = next((i for i, r in enumerate(records, 1) if not isinstance(r, dict)), None)
    if bad is not None:
        raise UsageError(f"{path}: record {bad} is not a JSON object")
    return records


def _reaggregate(records: list[dict], score: QualityScore, metric: str) -> float | None:
    """The metric over the task's records, or None where slimbench cannot rebuild it (an
    lm-eval task's own aggregation function)."""
    from slimbench.tasks.paired import metric_rows

    kind = score.task_spec.get("kind", "generate") if score.task_spec else "generate"
    options = metric_options(score.task_spec).get(metric, {})
    if kind == "lm_eval" and not options.get("aggregation"):
        return None
    rows, aggregate = metric_rows(records, kind, metric, options)
    return aggregate(rows)


def check_task(records: list[dict], task: str, score: QualityScore, source: Path,
               recorded_in: str) -> None:
    """One task's records against its recorded score.

    Raises:
        UsageError: a bad record, a count that differs, or a metric whose re-aggregated value
            is not the recorded one.
    """
    mine = [r for r in records if r.get("task") == task]
    if len(mine) != score.n:
        raise UsageError(f"{source}: task {task} has {len(mine)} example records, but "
                         f"{recorded_in} records n={score.n}: the file was truncated or "
                         "edited; the run is inconsistent")
    for metric, recorded in score.metrics.items():
        try:
            value = _reaggregate(mine, score, metric)
        except UsageError as e:
            raise UsageError(f"{source}: task {task}: {e}") from None
        if value is None:
            continue
        if not (math.isfinite(value) and math.isclose(value, recorded.value, rel_tol=REL_TOL,
                                                      abs_tol=ABS_TOL)):
            raise UsageError(
                f"{source}: task {task}: {metric} re-aggregated from its {len(mine)} examples "
                f"is {value:.6g}, but {recorded_in} records {recorded.value:.6g}: the run is "
                "inconsistent (a file was edited or damaged); measure the cell again")


def check_scores(quality: dict[str, QualityScore], sha256: str | None, folder: Path,
                 recorded_in: str) -> None:
    """Every task of a cell (or an eval result) whose examples were saved, against its file:
    the file's sha256 (when recorded), its records, counts and re-aggregated figures."""
    for name in sorted({s.examples_file for s in quality.values() if s.examples_file}):
        path = folder / name
        if not path.is_file():
            raise UsageError(f"{recorded_in}: names the per-example file {name}, which does "
                             "not exist beside it")
        if sha256 is not None and sha256_file(path) != sha256:
            raise UsageError(f"{path}: its sha256 is not the one {recorded_in} recorded: the "
                             "file was edited or truncated after the run; the run is "
                             "inconsistent")
        records = read_records(path)
        for task, score in quality.items():
            if score.examples_file == name:
                check_task(records, task, score, path, recorded_in)


def check_cell(result: CellResult, cells_dir: Path) -> None:
    """An ok cell's figures against the examples beside it (see ``check_scores``)."""
    if result.status == "ok":
        check_scores(result.quality, result.examples_sha256, Path(cells_dir),
                     f"cells/{result.cell.id}.json")


def check_rows(rows: list[Row], cells: list[CellResult], source: Path) -> None:
    """A results file's rows are exactly its cells' rows (a cell file is what was measured;
    the results file is a table made from them).

    Raises:
        UsageError: a row whose value differs, a row of no cell, or a cell's row missing.
    """
    from slimbench.reports.table import rows_from_cell

    def key(r: Row) -> tuple:
        return r.cell, r.metric

    made = {key(r): r for c in cells for r in rows_from_cell(c)}
    have = {key(r): r for r in rows}
    fix = "; run `slimbench report RUN` to write the tables again from the cells"
    for k, row in have.items():
        mine = made.get(k)
        if mine is None:
            raise UsageError(f"{source}: row {k[0]} {k[1]} belongs to no cell file in cells/: "
                             f"the results file does not match its run{fix}")
        same = row.value == mine.value or (
            row.value is not None and mine.value is not None
            and math.isclose(row.value, mine.value, rel_tol=REL_TOL, abs_tol=ABS_TOL))
        if not same:
            raise UsageError(f"{source}: {k[0]} {k[1]} is {row.value!r}, but "
                             f"cells/{k[0]}.json records {mine.value!r}: the results file "
                             f"does not match its cells{fix}")
    missing = sorted(set(made) - set(have))
    if missing:
        raise UsageError(f"{source}: lacks {missing[0][0]} {missing[0][1]}"
                         f"{f' and {len(missing) - 1} more rows' if len(missing) > 1 else ''} "
                         f"that its cells hold{fix}")

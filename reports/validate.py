"""``slimbench validate``: result files checked against the results schema (``schema.py``).

The check is the typed loader itself (every field, with its path), the same one the reports and
the gate read with, plus what a single file cannot say: that the per-example file a result names
exists beside it and backs its figures (``consistency.py``: its sha256, its records, each
metric re-aggregated), that a run's cell file is named after its cell and its results file
holds its cells' rows. Files in ``cells/`` that are not cells of the run's suite are named and
ignored, as every reader ignores them. A search's ``search.json`` (``slimbench search``) is
checked by its type, which also holds its candidates' names and counts together.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from slimbench.errors import UsageError
from slimbench.reports.consistency import check_cell, check_rows, check_scores
from slimbench.reports.table import cell_files
from slimbench.schema import SCHEMA_VERSION, CellResult, Document, EvalResult, load_file


def _files(path: Path) -> tuple[list[tuple[Path, str | None]], list[Path]]:
    """(file, the document it must be) for a file or a run directory, and the stray files in
    its cells/ (not cells of its suite)."""
    if path.is_dir():
        cells, strays = cell_files(path)
        files: list[tuple[Path, str | None]] = [(f, "cell") for f in cells]
        if (path / "results.json").is_file():
            files.append((path / "results.json", "results"))
        if (path / "search.json").is_file():  # a search's output directory
            files.append((path / "search.json", "search"))
        if not files:
            raise UsageError(f"{path}: no cell results (cells/*.json), no results.json and no "
                             "search.json: not a slimbench run or search directory")
        return files, strays
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    return [(path, None)], []


def _check_links(doc: Document, source: Path, in_run: bool) -> None:
    """What the file names must exist: its per-example files; a run's cell file is named after
    its cell (resume finds cells by name)."""
    named = []
    if isinstance(doc, CellResult):
        named = [(f"quality.{t}.examples_file", q.examples_file) for t, q in doc.quality.items()]
        if in_run and source.stem != doc.cell.id:
            raise UsageError(f"{source}: cell.id must be {source.stem!r} (the file's name), "
                             f"got {doc.cell.id!r}")
    elif isinstance(doc, EvalResult):
        named = [("examples_file", doc.examples_file)]
        named += [(f"tasks.{t}.examples_file", q.examples_file) for t, q in doc.tasks.items()]
    for field, name in named:
        if name is not None and not (source.parent / name).is_file():
            raise UsageError(f"{source}: {field} must name a file beside it, got {name!r}, "
                             "which does not exist")
    # the figures must be what the files beside them give (consistency.py)
    if isinstance(doc, CellResult):
        check_cell(doc, source.parent)
    elif isinstance(doc, EvalResult):
        check_scores(doc.tasks, None, source.parent, str(source))


def validate(path: str | Path) -> str:
    """Check a cell JSON, a results.json, an ``eval --out`` file, a ``search.json``, or a run
    directory (every ``cells/*.json`` and its ``results.json``; a search's ``search.json``).

    Returns:
        One line: ``valid: PATH: what was checked``.

    Raises:
        UsageError: the first violation: the file, the field's path, what it must be and what
            it is; or the file's schema version when it is not this slimbench's.
    """
    path = Path(path)
    counts: Counter[str] = Counter()
    files, strays = _files(path)
    docs = {}
    for source, want in files:
        docs[source] = doc = load_file(source, want)
        _check_links(doc, source, in_run=path.is_dir())
        counts[doc.document] += 1
    results = path / "results.json"
    if path.is_dir() and results in docs and (path / "cells").is_dir():
        cells = [d for d in docs.values() if isinstance(d, CellResult)]
        check_rows(docs[results].rows, cells, results)
    names = {"cell": "cell result", "eval": "eval result", "results": "results file",
             "search": "search result"}
    what = ", ".join(f"{n} {names[k]}{'s' if n > 1 else ''}" for k, n in counts.items())
    ignored = f"; ignored {len(strays)} file(s) in cells/ that are not cells of its suite: " \
        f"{', '.join(p.name for p in strays)}" if strays else ""
    return f"valid: {path}: {what} (results schema version {SCHEMA_VERSION}){ignored}"

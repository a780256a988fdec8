"""``slimbench validate``: result files checked against the results schema (``schema.py``).

The check is the typed loader itself (every field, with its path), the same one the reports and
the gate read with, plus what a single file cannot say: that the per-example file a result names
exists beside it, and that a run's cell file is named after its cell.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from slimbench.errors import UsageError
from slimbench.reports.schema import SCHEMA_VERSION, CellResult, Document, EvalResult, load_file


def _files(path: Path) -> list[tuple[Path, str | None]]:
    """(file, the document it must be) for a file or a run directory."""
    if path.is_dir():
        files: list[tuple[Path, str | None]] = [
            (f, "cell") for f in sorted((path / "cells").glob("*.json"))]
        if (path / "results.json").is_file():
            files.append((path / "results.json", "results"))
        if not files:
            raise UsageError(f"{path}: no cell results (cells/*.json) and no results.json: not "
                             "a slimbench run directory")
        return files
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    return [(path, None)]


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


def validate(path: str | Path) -> str:
    """Check a cell JSON, a results.json, an ``eval --out`` file, or a run directory (every
    ``cells/*.json`` and its ``results.json``).

    Returns:
        One line: ``valid: PATH: what was checked``.

    Raises:
        UsageError: the first violation: the file, the field's path, what it must be and what
            it is; or the file's schema version when it is not this slimbench's.
    """
    path = Path(path)
    counts: Counter[str] = Counter()
    for source, want in _files(path):
        doc = load_file(source, want)
        _check_links(doc, source, in_run=path.is_dir())
        counts[doc.document] += 1
    names = {"cell": "cell result", "eval": "eval result", "results": "results file"}
    what = ", ".join(f"{n} {names[k]}{'s' if n > 1 else ''}" for k, n in counts.items())
    return f"valid: {path}: {what} (results schema version {SCHEMA_VERSION})"

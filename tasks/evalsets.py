"""The embedded evaluation sets (JSONL + manifest), checked against their sha256 on load."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from slimbench.errors import UsageError

EVALSET_DIR = Path(__file__).resolve().parent / "data" / "evalsets"


@dataclasses.dataclass(frozen=True)
class EvalsetEntry:
    """One set of ``manifest.json``.

    Attributes:
        file: the set's JSON-lines file, in ``EVALSET_DIR``.
        count: rows in the file.
        bytes: the file's size.
        sha256: the file's sha256, checked on every load.
        description: what the set holds and what scores it.
        source: where its text comes from.
        license: the text's license.
        builder: the script (and seed) that built the set, where it is not ``build_corpus``.
    """

    file: str
    count: int
    bytes: int
    sha256: str
    description: str
    source: str
    license: str
    builder: str | None = None


@lru_cache(maxsize=1)
def manifest() -> dict[str, EvalsetEntry]:
    """Every embedded set's manifest entry, by set name."""
    raw = json.loads((EVALSET_DIR / "manifest.json").read_text())
    return {name: EvalsetEntry(**entry) for name, entry in raw.items()}


def evalset_names() -> list[str]:
    return sorted(manifest())


# A set's rows are its task's data: each set has fields of its own (text; prompt and target;
# choices), which task templates read by name, so they stay mappings.
def load_evalset(name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of an embedded set, first ``limit`` of them if given.

    Raises:
        UsageError: unknown set, or a file whose sha256 no longer matches the manifest.
    """
    entry = manifest().get(name)
    if entry is None:
        raise UsageError(f"unknown evaluation set {name!r}; known: {', '.join(evalset_names())}")
    if limit is not None and limit <= 0:
        raise UsageError(f"limit must be positive, got {limit}")
    blob = (EVALSET_DIR / entry.file).read_bytes()
    if hashlib.sha256(blob).hexdigest() != entry.sha256:
        raise UsageError(f"evaluation set {name!r} does not match its manifest sha256; "
                         "the file was modified")
    rows = [json.loads(line) for line in blob.decode("utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows

"""The embedded evaluation sets (JSONL + manifest), checked against their sha256 on load."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from slimbench.errors import UsageError

EVALSET_DIR = Path(__file__).resolve().parent / "data" / "evalsets"


@lru_cache(maxsize=1)
def manifest() -> dict:
    return json.loads((EVALSET_DIR / "manifest.json").read_text())


def evalset_names() -> list[str]:
    return sorted(manifest())


def load_evalset(name: str, limit: int | None = None) -> list[dict]:
    """Rows of an embedded set, first ``limit`` of them if given.

    Raises:
        UsageError: unknown set, or a file whose sha256 no longer matches the manifest.
    """
    entry = manifest().get(name)
    if entry is None:
        raise UsageError(f"unknown evaluation set {name!r}; known: {', '.join(evalset_names())}")
    if limit is not None and limit <= 0:
        raise UsageError(f"limit must be positive, got {limit}")
    blob = (EVALSET_DIR / entry["file"]).read_bytes()
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise UsageError(f"evaluation set {name!r} does not match its manifest sha256; "
                         "the file was modified")
    rows = [json.loads(line) for line in blob.decode("utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows

"""Content digests of files: what an artifact's manifest and a cell's record of its examples
file hold, so that what is read later can be checked against what was written."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, h=None) -> str:
    """Hex sha256 of a file's bytes (fed into ``h`` when given, to hash several files)."""
    h = h or hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

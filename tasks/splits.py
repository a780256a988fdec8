"""Held-out splits: every example is in *tune* or in *test*, by a stable hash of its id.

A recipe search (``slimbench search``) chooses among many candidates, so the best of them on
the examples it searched looks better there than it is: a selection bias that grows with the
number of candidates. It therefore only ever looks at *tune*, and the winner is confirmed on
*test*, examples no candidate was chosen on.

The rule is one for every source: embedded sets, a user's JSONL file, a Hugging Face dataset
and lm-eval documents alike: sha256 of a fixed salt and the example's id (its ``id`` field,
else its position in the file), the first 8 bytes read as a fraction of 2**64, *tune* below
``TUNE_FRACTION``. It needs no list of ids to be kept anywhere, survives a set growing (old
examples keep their side) and does not depend on the order rows are read in. The embedded
corpus's training files, which calibration and distillation read, are in neither: the
evaluation sets are cut from the validation files only (``tasks/data/evalsets/manifest.json``).

``docs/splits.md`` lists the size of each side for the embedded sets (a test recomputes them).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from slimbench.errors import UsageError

Split = Literal["all", "tune", "test"]
SPLITS: tuple[str, ...] = ("all", "tune", "test")
SALT = b"slimbench-split-v1"  # a new salt is a new split: bump it only with the docs' counts
TUNE_FRACTION = 0.5


def split_of(example_id: Any) -> str:
    """``"tune"`` or ``"test"`` for an example id (str or int; ``3`` and ``"3"`` are one id)."""
    digest = hashlib.sha256(SALT + b"\0" + str(example_id).encode("utf-8")).digest()
    return "tune" if int.from_bytes(digest[:8], "big") < TUNE_FRACTION * 2**64 else "test"


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return split


def select(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The rows of ``split`` (all of them for ``"all"``), in their order; a row without an
    ``id`` is known by its position in ``rows``."""
    if check_split(split) == "all":
        return rows
    return [row for i, row in enumerate(rows) if split_of(row.get("id", i)) == split]

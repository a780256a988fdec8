"""The embedded training corpus: CPython standard-library source, split by file."""

from __future__ import annotations

import json
import lzma
from functools import lru_cache
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "data" / "corpus"
SPLITS = ("train", "validation")


@lru_cache(maxsize=1)
def _rows() -> tuple[dict, ...]:
    with lzma.open(CORPUS_DIR / "stdlib.jsonl.xz", "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


def load_corpus(split: str) -> list[dict]:
    """Rows ``{"path", "split", "text"}`` of one split, in a fixed (path) order.

    Raises:
        ValueError: for a split that does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; choose one of {', '.join(SPLITS)}")
    return [r for r in _rows() if r["split"] == split]

"""The embedded training corpus: CPython standard-library source, split by file."""

from __future__ import annotations

import dataclasses
import json
import lzma
from functools import lru_cache
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "data" / "corpus"
SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class CorpusFile:
    """One source file of the corpus.

    Attributes:
        path: the file's path in the standard library (``json/decoder.py``).
        split: ``train`` or ``validation``.
        text: the file's source.
    """

    path: str
    split: str
    text: str


@lru_cache(maxsize=1)
def _rows() -> tuple[CorpusFile, ...]:
    with lzma.open(CORPUS_DIR / "stdlib.jsonl.xz", "rt", encoding="utf-8") as f:
        return tuple(CorpusFile(**json.loads(line)) for line in f)


def load_corpus(split: str) -> list[CorpusFile]:
    """The files of one split, in a fixed (path) order.

    Raises:
        ValueError: for a split that does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; choose one of {', '.join(SPLITS)}")
    return [r for r in _rows() if r.split == split]

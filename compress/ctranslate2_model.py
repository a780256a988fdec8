"""A CTranslate2 artifact: ``model.bin`` and ``vocabulary.json`` as CTranslate2's converter
writes them, run by its ``Generator``.

CTranslate2 takes token *strings* for generation (``generate_batch``) and ids only for
scoring (``forward_batch``), so the artifact's vocabulary maps slimbench's ids to strings.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import struct
from pathlib import Path

import numpy as np

from slimbench.extras import import_extra

CT2_BIN = "model.bin"
CT2_VOCAB = "vocabulary.json"
HF_CONFIG = "hf_config"  # the folder of the Hugging Face config (config.json is CTranslate2's)
# model.bin's type ids (CTranslate2's DataType enum, include/ctranslate2/types.h)
_TYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


def import_ctranslate2():
    """The ``ctranslate2`` module, or one line naming the extra that installs it."""
    return import_extra("ctranslate2", "ctranslate2", "CTranslate2")


@dataclasses.dataclass
class Ct2Model:
    """Args:
        path: the artifact folder (``model.bin``, ``vocabulary.json``, config).
        config: the Hugging Face config of the model it was converted from.
    """

    path: Path
    config: object
    device: str = "cpu"

    def generator(self, threads: int | None = None):
        """A ``Generator`` on the CPU in the stored weight type with ``threads`` threads (0:
        CTranslate2's default) per worker, two workers sharing the weights: a generation
        paused between timed steps holds one (``Ct2Runtime``), scoring runs on the other;
        slimbench never runs both at once."""
        ct2 = import_ctranslate2()
        return ct2.Generator(str(self.path), device="cpu", compute_type="default",
                             inter_threads=2, intra_threads=threads or 0)

    def vocabulary(self) -> list[str]:
        return json.loads((self.path / CT2_VOCAB).read_text(encoding="utf-8"))


def ct2_logits_fn(model: Ct2Model, threads: int | None = None):
    """ids (B, T) -> logits (B, T, V) without a cache (parity checks)."""
    generator = model.generator(threads)

    def fn(ids: np.ndarray) -> np.ndarray:
        return np.array(generator.forward_batch(np.asarray(ids).tolist()))

    return fn


def variables_by_type(path: Path) -> dict[str, dict]:
    """{"weights" | "other": {type: count}, "float_weights": [names]} of the variables in a
    ``model.bin``: "weights" are the 2-D ones (projections, embeddings). Read from the file's
    header by hand: CTranslate2 has no reader for it in Python (the layout is its
    ``ModelSpec._serialize``)."""
    counts: dict[str, collections.Counter] = {"weights": collections.Counter(),
                                              "other": collections.Counter()}
    floats = []
    with open(path, "rb") as f:

        def read(fmt: str):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))

        def string() -> str:
            (n,) = read("H")
            return f.read(n).rstrip(b"\0").decode()

        read("I")  # binary version
        string()  # spec name
        read("I")  # revision
        (n_vars,) = read("I")
        for _ in range(n_vars):
            name = string()
            (rank,) = read("B")
            shape = read(f"{rank}I") if rank else ()
            (type_id,) = read("B")
            (n_bytes,) = read("I")
            f.seek(n_bytes, 1)
            kind = "weights" if len(shape) == 2 and min(shape) > 1 else "other"
            counts[kind][_TYPES[type_id]] += 1
            if kind == "weights" and _TYPES[type_id] in ("float32", "float16", "bfloat16"):
                floats.append(name)
    return {k: dict(v) for k, v in counts.items()} | {"float_weights": floats}

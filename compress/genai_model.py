"""An ONNX Runtime GenAI artifact: ``model.onnx`` (+ ``model.onnx.data``) and
``genai_config.json`` as GenAI's model builder writes them, run by GenAI's ``Generator``.

GenAI reads its runtime settings from ``genai_config.json``; slimbench overlays three at
load (``Config.overlay``), never on disk: the session's threads, no end-of-sequence tokens
(a timed or compared generation runs its full length: slimbench stops on its own stop ids,
as every runtime does) and no pad token (GenAI would otherwise mask every occurrence of the
pad id in a prompt: slimbench batches prompts of one length only, so it needs none).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from slimbench.extras import import_extra

GENAI_CONFIG = "genai_config.json"
GENAI_ONNX = "model.onnx"
# the distributions that install the ``onnxruntime_genai`` module: slimbench[genai] installs
# the one built against onnxruntime-gpu (this project's ONNX Runtime); a user may have the
# other, built against the CPU ``onnxruntime``
DISTRIBUTIONS = ("onnxruntime-genai-cuda", "onnxruntime-genai")


def import_genai():
    """The ``onnxruntime_genai`` module, or one line naming the extra that installs it."""
    return import_extra("onnxruntime_genai", "genai", "ONNX Runtime GenAI")


@dataclasses.dataclass
class GenaiModel:
    """Args:
        path: the artifact folder (``genai_config.json``, ``model.onnx`` and its data).
        config: the Hugging Face config of the model it was built from.
    """

    path: Path
    config: object
    device: str = "cpu"

    def load(self, threads: int | None = None):
        """GenAI's ``Model`` on the CPU with ``threads`` intra-op threads (None: GenAI's
        default), without end-of-sequence or pad tokens (module docstring)."""
        og = import_genai()
        session: dict = {"inter_op_num_threads": 1}
        if threads:
            session["intra_op_num_threads"] = int(threads)
        cfg = og.Config(str(self.path))
        cfg.clear_providers()  # the CPU: a builder run for another device names its EP
        cfg.overlay(json.dumps({"model": {"eos_token_id": [], "pad_token_id": -1,
                                          "decoder": {"session_options": session}}}))
        return og.Model(cfg)


def generator(model, batch: int, max_length: int):
    """A greedy ``Generator`` of ``model`` for ``batch`` rows of up to ``max_length`` tokens
    (its KV cache is allocated for that length)."""
    og = import_genai()
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=int(max_length), batch_size=int(batch),
                              do_sample=False)
    return og.Generator(model, params)


def prompt_logits(model, ids: np.ndarray) -> np.ndarray:
    """(B, T, V) logits of a batch of equal-length rows, each from position 0."""
    ids = np.asarray(ids)
    g = generator(model, ids.shape[0], ids.shape[1])
    g.append_tokens(ids.astype(np.int32))
    return np.asarray(g.get_output("logits"), dtype=np.float32)


def genai_logits_fn(model: GenaiModel, threads: int | None = None):
    """ids (B, T) -> logits (B, T, V) without a cache (parity checks)."""
    loaded = model.load(threads)
    return lambda ids: prompt_logits(loaded, ids)

"""The embedded reference checkpoint: a small GPT-2 trained by this project on CPython stdlib.

``scripts/train_reference.py`` builds it; ``MODEL_CARD.md`` beside the weights says how and
what it scores.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

REFERENCE_NAME = "reference"
REFERENCE_DIR = Path(__file__).resolve().parent / "reference" / "stdlib-gpt2-mini"


@dataclasses.dataclass(frozen=True)
class ReferenceCard:
    """The machine-readable model card (``card.json``, written by
    ``scripts/write_model_card.py``).

    Attributes:
        name: the checkpoint's name.
        parameters: parameter count (tied weights once).
        bytes_on_disk: bytes of model.safetensors.
        weights_sha256: sha256 of model.safetensors.
        validation_perplexity: token perplexity on ``lm_stdlib`` under ``perplexity_protocol``.
        validation_bits_per_byte: the same as bits per byte of text.
        config: the GPT-2 config's shape fields (n_embd, n_head, n_layer, ...).
        perplexity_protocol: how perplexity was measured (context_length, stride, bos, texts).
        tasks: per task its metric, value, direction and trivial baseline.
        training: how it was trained (steps, tokens, seconds, ...).
        corpus: the training corpus (source, files, split rule, sha256).
        environment: the machine and packages the card was written on.
    """

    name: str
    parameters: int
    bytes_on_disk: int
    weights_sha256: str
    validation_perplexity: float
    validation_bits_per_byte: float
    config: dict[str, int]
    perplexity_protocol: dict[str, Any]
    tasks: dict[str, dict[str, Any]]
    training: dict[str, Any]
    corpus: dict[str, Any]
    environment: dict[str, Any]


def reference_card() -> ReferenceCard:
    """The machine-readable model card (``card.json``): perplexity protocol and scores."""
    return ReferenceCard(**json.loads((REFERENCE_DIR / "card.json").read_text()))

"""The embedded reference checkpoint: a small GPT-2 trained by this project on CPython stdlib.

``scripts/train_reference.py`` builds it; ``MODEL_CARD.md`` beside the weights says how and
what it scores.
"""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE_NAME = "reference"
REFERENCE_DIR = Path(__file__).resolve().parent / "reference" / "stdlib-gpt2-mini"


def reference_card() -> dict:
    """The machine-readable model card (``card.json``): perplexity protocol and scores."""
    return json.loads((REFERENCE_DIR / "card.json").read_text())

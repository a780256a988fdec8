"""Calibration data shared by the steps that need activations (static int8, Wanda, Taylor)."""

from __future__ import annotations

from slimbench.errors import UsageError


def calibration_batches(tokenizer, vocab_size: int, samples: int, seq_len: int) -> list:
    """``samples`` token sequences of ``seq_len`` from the corpus train split (held out from
    every evaluation set), or seeded random ids for models without a tokenizer."""
    import numpy as np

    if tokenizer is None:
        rng = np.random.default_rng(0)
        return [rng.integers(0, vocab_size, size=(1, seq_len)) for _ in range(samples)]
    from slimbench.tasks.corpus import load_corpus

    out = []
    for row in load_corpus("train"):
        ids = tokenizer(row.text[:20_000])["input_ids"]
        for start in range(0, len(ids) - seq_len, seq_len * 8):
            out.append(np.array([ids[start: start + seq_len]], dtype=np.int64))
            if len(out) == samples:
                return out
    if not out:
        raise UsageError(f"no calibration sequence of {seq_len} tokens in the corpus")
    return out


def parent_calibration(parent, samples: int, seq_len: int) -> list:
    """Calibration batches for a torch ``parent`` (a ``LoadedModel``), no longer than its
    position table allows."""
    from slimbench.compress.arch import max_positions

    cfg = parent.model.config
    return calibration_batches(parent.tokenizer, cfg.vocab_size, samples,
                               min(seq_len, max_positions(cfg)))

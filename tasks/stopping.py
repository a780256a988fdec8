"""Stop strings -> the token ids that may end a greedy generation (``CausalLM``'s ``stop_ids``).

Shared by native generate tasks (``generation.py``) and the lm-eval bridge's ``generate_until``,
so that both stop on the same tokens.
"""

from __future__ import annotations


def stop_token_ids(tokenizer, stop: tuple[str, ...]) -> frozenset[int]:
    """Token ids whose text contains a whole stop string: generation can end right there."""
    if not stop:
        return frozenset()
    vocab = range(len(tokenizer))
    return frozenset(i for i in vocab if any(s in tokenizer.decode([i]) for s in stop))

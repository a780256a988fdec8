"""The small protocol a runtime satisfies so that every task runs on torch and ORT alike."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class CausalLM(Protocol):
    """What tasks need from a model, whatever executes it.

    Attributes:
        max_length: the longest sequence (prompt + generated) the model accepts.
    """

    max_length: int

    def token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        """For each sequence ``x`` (length T), ``log p(x[t] | x[:t])`` for t = 1..T-1.

        Returns float64 arrays of length T-1. Sequences in a batch may differ in length.
        """
        ...

    def next_token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        """For each sequence ``x`` (length T), the full ``log p(. | x[:t+1])`` for t = 0..T-1.

        Returns float64 arrays of shape (T, V): row t is the distribution of token t+1.
        """
        ...

    def greedy_generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                              stop_ids: frozenset[int] = frozenset()) -> list[list[int]]:
        """``greedy_generate`` for each prompt; each result as if generated alone."""
        ...

    def greedy_generate(self, prompt: list[int], max_new_tokens: int,
                        stop_ids: frozenset[int] = frozenset()) -> list[int]:
        """Greedy continuation of ``prompt`` (new tokens only), with a KV cache.

        Stops after ``max_new_tokens`` or right after emitting a token in ``stop_ids``.
        """
        ...


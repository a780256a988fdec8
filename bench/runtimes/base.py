"""What every runtime shares: input checks, right padding and the greedy KV-cache loop.

A runtime subclasses ``RuntimeBase`` and provides the backend-specific members of the
``CausalLM`` protocol (``forward`` with its cache, ``sync``, ``placement``, the two log-prob
methods); the greedy loop below then runs on top of ``forward``, so both backends generate by
one definition. The abstract methods make a runtime that misses one fail when it is built.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class RuntimeBase(abc.ABC):
    """Base of every runtime: a ``CausalLM`` once the abstract methods are written.

    Subclasses set ``backend`` (class attribute) and ``device``, ``max_length``, ``vocab_size``
    (in ``__init__``).
    """

    backend: str
    device: str
    max_length: int
    vocab_size: int
    # True where ``greedy_generate_batch`` really batches (it needs an attention mask input)
    batched_generation = False

    @abc.abstractmethod
    def forward(self, input_ids: Any, past: Any = None,
                keep_cache: bool = True) -> tuple[Any, Any]:
        """See ``CausalLM.forward``."""

    @abc.abstractmethod
    def sync(self) -> None:
        """See ``CausalLM.sync``."""

    @abc.abstractmethod
    def placement(self) -> dict | None:
        """See ``CausalLM.placement``."""

    @abc.abstractmethod
    def token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        """See ``CausalLM.token_logprobs``."""

    @abc.abstractmethod
    def next_token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        """See ``CausalLM.next_token_logprobs``."""

    def _padded(self, batch: list[list[int]]) -> tuple[np.ndarray, list[int]]:
        """Right-padded (B, T) ids; under a causal mask pads after a sequence change nothing."""
        lengths = [len(x) for x in batch]
        if min(lengths) < 1 or max(lengths) > self.max_length:
            raise ValueError(f"sequence lengths must be in [1, {self.max_length}]")
        ids = np.zeros((len(batch), max(lengths)), dtype=np.int64)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = x
        return ids, lengths

    def greedy_generate(self, prompt: list[int], max_new_tokens: int,
                        stop_ids: frozenset[int] = frozenset()) -> list[int]:
        """See ``CausalLM.greedy_generate``: one prefill, then one cached step per token."""
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({len(prompt)}) + {max_new_tokens} new tokens exceeds "
                             f"{self.max_length} positions")
        logits, past = self.forward(np.array([prompt], dtype=np.int64))
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            new.append(token)
            if token in stop_ids or len(new) == max_new_tokens:
                break
            logits, past = self.forward(np.array([[token]], dtype=np.int64), past)
        return new

    def greedy_generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                              stop_ids: frozenset[int] = frozenset()) -> list[list[int]]:
        """One example at a time: a backend without an attention-mask input (the exported
        ONNX graph) cannot pad a batch of prompts of different lengths."""
        return [self.greedy_generate(p, max_new_tokens, stop_ids) for p in prompts]

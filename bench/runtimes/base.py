"""What every runtime shares: input checks, right padding and the greedy KV-cache loop.

A runtime provides ``forward(ids, past) -> (logits, past)``; the loop below is then the same
for torch and ONNX Runtime, so both backends generate by one definition.
"""

from __future__ import annotations

import numpy as np


class RuntimeBase:
    max_length: int
    # True where ``greedy_generate_batch`` really batches (it needs an attention mask input)
    batched_generation = False

    def forward(self, input_ids, past=None):  # pragma: no cover - implemented by backends
        raise NotImplementedError

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

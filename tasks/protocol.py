"""The one protocol a runtime satisfies, so that tasks and scenarios run on torch and ORT alike.

Tasks (perplexity, generation, fidelity) use the log-prob and greedy members; latency
scenarios use ``forward`` with its KV cache and ``sync``. Everything a caller outside a
runtime's own module may touch is declared here, public; a backend's extras (ORT's IO
binding, say) stay on its class and are used only by code that asked for that class.

This module lives in ``tasks`` (which must not import ``bench``); ``bench.runtimes`` implements
it. ``tests/test_runtime_protocol.py`` checks every member below on every registered runtime.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from slimbench.schema.measurements import Placement


@runtime_checkable
class CausalLM(Protocol):
    """A causal LM loaded on a backend and device: what tasks and scenarios may use.

    Attributes:
        backend: which engine runs it (``torch``, ``onnxruntime``); recorded in results.
        device: where it runs, ``cpu`` or ``cuda:N``.
        max_length: the longest sequence (prompt + generated) the model accepts.
        vocab_size: number of logits per position.
        batched_generation: True where ``greedy_generate_batch`` pads prompts of different
            lengths into one batch and ``forward`` takes an attention mask with pads; False
            where it runs them one at a time (an ONNX graph without an attention-mask input,
            exported before export_onnx version 2). Tasks size their batches by it and report
            which was used.
        external_cache: True where ``forward`` takes and returns the KV cache; False for an
            engine that keeps it inside its own generator (CTranslate2): there only
            ``greedy_start`` / ``greedy_step`` continue a sequence, and ``forward`` scores
            without a cache.
    """

    backend: str
    device: str
    max_length: int
    vocab_size: int
    batched_generation: bool
    external_cache: bool

    def forward(self, input_ids: Any, past: Any = None, keep_cache: bool = True,
                attention_mask: Any = None, position_ids: Any = None,
                last_only: bool = False) -> tuple[Any, Any]:
        """One forward pass over ``input_ids`` (B, T) after the cache ``past`` (None: none).

        Returns ``(logits, new_past)``: logits (B, T, V) in the backend's own array type (a
        torch tensor on the device, or a numpy array), so that a timing loop pays no copy;
        callers only slice and ``argmax`` them. ``new_past`` continues the sequence in the
        next call, and is None with ``keep_cache=False``. Only the cache returned by the latest
        call may be continued (a runtime may reuse the buffers of older ones).

        Optional (defaults: an unpadded batch, every position's logits):

        - ``attention_mask``: (B, past + T) int array, 1 for real tokens, 0 for pads; pass the
          whole mask (past columns included) at every step of a padded batch. None: all ones.
        - ``position_ids``: (B, T) int array; None: from the mask (each real token's index
          among its row's real tokens), which without a mask continues after the past.
        - ``last_only``: logits (B, 1, V) of the last position only: the lm_head projection
          of the other positions is skipped where the backend can (generation needs no more).

        A runtime whose ``batched_generation`` is False (an ONNX graph exported before the
        mask input) refuses a mask with zeros. One whose ``padding_side`` is ``"right"`` (an
        ONNX graph with fused attention, which reads each row's length off the mask) takes
        right-padded masks only: each row ones, then zeros.
        """
        ...

    def sync(self) -> None:
        """Return only once the device has finished the work queued so far (timing needs it)."""
        ...

    def placement(self) -> Placement | None:
        """Where the graph's operations ran, or None where the backend does not place them.

        ORT answers a ``Placement`` (primary provider, nodes by provider, fallbacks): nodes the
        primary provider could not take ran elsewhere, often with copies around them. Torch
        eager runs every op on ``device`` and answers None.
        """
        ...

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

    def greedy_generate(self, prompt: list[int], max_new_tokens: int,
                        stop_ids: frozenset[int] = frozenset()) -> list[int]:
        """Greedy continuation of ``prompt`` (new tokens only), with a KV cache.

        Stops after ``max_new_tokens`` or right after emitting a token in ``stop_ids``.
        """
        ...

    def greedy_generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                              stop_ids: frozenset[int] = frozenset()) -> list[list[int]]:
        """``greedy_generate`` for each prompt; each result as if generated alone."""
        ...

    def greedy_start(self, prompt: Any) -> tuple[Any, Any]:
        """The prefill of a greedy generation: ``(tokens, state)``, the (B, 1) greedy next
        token of each row of ``prompt`` (B, T) and what continues it. The latency scenarios
        time this and ``greedy_step`` on every backend."""
        ...

    def greedy_step(self, tokens: Any, state: Any) -> tuple[Any, Any]:
        """One cached decode step of a greedy generation fed ``tokens`` (B, 1), the previous
        step's: ``(next tokens, state)``. Only the newest state can be continued."""
        ...

"""What every runtime shares: input checks, right padding and the greedy KV-cache loops.

A runtime subclasses ``RuntimeBase`` and provides the backend-specific members of the
``CausalLM`` protocol (``forward`` with its cache, mask and positions, ``sync``,
``placement``, the two log-prob methods); the greedy loops below then run on top of
``forward``, so both backends generate by one definition, single prompts and left-padded
batches alike. The abstract methods make a runtime that misses one fail when it is built.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from slimbench.compress.onnx_model import positions_from_mask
from slimbench.schema.measurements import Placement


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def picked_logprobs(ids: np.ndarray, lengths: list[int], logits: np.ndarray) -> list[np.ndarray]:
    """``token_logprobs`` of right-padded ``ids`` from their (B, T, V) numpy logits."""
    lp = log_softmax(logits[:, :-1])
    picked = np.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]
    return [picked[i, : n - 1] for i, n in enumerate(lengths)]


def all_logprobs(lengths: list[int], logits: np.ndarray) -> list[np.ndarray]:
    """``next_token_logprobs`` of right-padded rows from their (B, T, V) numpy logits."""
    lp = log_softmax(logits)  # (B, T, V) float64
    return [lp[i, :n] for i, n in enumerate(lengths)]


def cacheless_rows(engine: str, input_ids, past, keep_cache: bool, attention_mask,
                   position_ids) -> tuple[np.ndarray, list[int]]:
    """(ids (B, T), each row's length) of a ``forward`` call to an engine that keeps its KV
    cache inside its generator (``external_cache = False``): such a forward scores right-padded
    rows without a cache, positions counted from 0; anything else is refused, naming it."""
    if past is not None or keep_cache:
        raise ValueError(f"{engine} keeps its KV cache inside its generator: forward scores "
                         "without one (keep_cache=False); a generation continues through "
                         "greedy_start / greedy_step")
    ids = np.asarray(input_ids.cpu() if hasattr(input_ids, "cpu") else input_ids,
                     dtype=np.int64)
    batch, seq = ids.shape
    lengths = [seq] * batch
    if attention_mask is not None:
        mask = np.asarray(attention_mask)
        lengths = [int(n) for n in mask.sum(-1)]
        if not all(mask[i, :n].all() for i, n in enumerate(lengths)):
            raise ValueError(f"{engine} takes right-padded rows only (ones, then zeros)")
    if position_ids is not None and not (np.asarray(position_ids)
                                         == np.arange(seq)[None, :]).all():
        raise ValueError(f"{engine} counts positions itself (0, 1, ...)")
    return ids, lengths


class ForwardScoring:
    """``token_logprobs`` and ``next_token_logprobs`` of a runtime from one cacheless forward
    over the right-padded batch (its mask with it); a runtime may override ``_scored``."""

    def _scored(self, batch: list[list[int]]) -> tuple[np.ndarray, list[int], Any]:
        ids, lengths = self._padded(batch)
        logits, _ = self.forward(ids, keep_cache=False,
                                 attention_mask=self._right_mask(lengths, ids.shape[1]))
        return ids, lengths, logits

    def token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        return picked_logprobs(*self._scored(batch))

    def next_token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        _, lengths, logits = self._scored(batch)
        return all_logprobs(lengths, logits)


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
    # where a batch's shorter prompts get their pads: "left" (the mask hides them), or
    # "right" for graphs with fused attention, which read each row's length off the mask and
    # attend to its first n positions (compress/fused_attention.py)
    padding_side = "left"
    # False where a row's outputs depend on the rest of its batch (see
    # OnnxModel.batch_invariant); the generation protocol records it
    batch_invariant = True
    # False for an engine whose KV cache stays inside its own generator (CausalLM)
    external_cache = True
    # the largest batch greedy_start / greedy_step take (None: any), and why; the cell
    # reports larger sweep points n/a with the reason
    stepped_batch_limit: int | None = None
    stepped_batch_why = ""

    @abc.abstractmethod
    def forward(self, input_ids: Any, past: Any = None, keep_cache: bool = True,
                attention_mask: Any = None, position_ids: Any = None,
                last_only: bool = False) -> tuple[Any, Any]:
        """See ``CausalLM.forward``."""

    @abc.abstractmethod
    def sync(self) -> None:
        """See ``CausalLM.sync``."""

    @abc.abstractmethod
    def placement(self) -> Placement | None:
        """See ``CausalLM.placement``."""

    @abc.abstractmethod
    def token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        """See ``CausalLM.token_logprobs``."""

    @abc.abstractmethod
    def next_token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        """See ``CausalLM.next_token_logprobs``."""

    def greedy_start(self, prompt: Any) -> tuple[Any, Any]:
        """See ``CausalLM.greedy_start``: a prefill with the last position's logits only, and
        its argmax (tokens stay in the backend's array type, on its device)."""
        logits, past = self.forward(prompt, last_only=True)
        return logits[:, -1:].argmax(-1), past

    def greedy_step(self, tokens: Any, state: Any) -> tuple[Any, Any]:
        """See ``CausalLM.greedy_step``: one cached forward of ``tokens`` and its argmax."""
        logits, past = self.forward(tokens, state)
        return logits[:, -1:].argmax(-1), past

    def _padded(self, batch: list[list[int]]) -> tuple[np.ndarray, list[int]]:
        """Right-padded (B, T) ids; under a causal mask pads after a sequence change nothing."""
        lengths = [len(x) for x in batch]
        if min(lengths) < 1 or max(lengths) > self.max_length:
            raise ValueError(f"sequence lengths must be in [1, {self.max_length}]")
        ids = np.zeros((len(batch), max(lengths)), dtype=np.int64)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = x
        return ids, lengths

    @staticmethod
    def _right_mask(lengths: list[int], width: int) -> np.ndarray:
        """(B, width) attention mask of right-padded sequences: 1 on each row's first n."""
        return (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)

    def greedy_generate(self, prompt: list[int], max_new_tokens: int,
                        stop_ids: frozenset[int] = frozenset()) -> list[int]:
        """See ``CausalLM.greedy_generate``: one prefill, then one cached step per token; only
        the last position gets logits (``last_only``)."""
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({len(prompt)}) + {max_new_tokens} new tokens exceeds "
                             f"{self.max_length} positions")
        logits, past = self.forward(np.array([prompt], dtype=np.int64), last_only=True)
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            new.append(token)
            if token in stop_ids or len(new) == max_new_tokens:
                break
            logits, past = self.forward(np.array([[token]], dtype=np.int64), past,
                                        last_only=True)
        return new

    def greedy_generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                              stop_ids: frozenset[int] = frozenset()) -> list[list[int]]:
        """Greedy continuations of prompts of different lengths in one batch, KV-cached; one
        prompt at a time where the backend has no batched generation (an ONNX graph without
        an attention-mask input).

        Prompts are LEFT-padded so that every row's next token sits in the last column; the
        attention mask hides the pads and the position ids count real tokens only (GPT-2
        would otherwise give a padded row's first token position ``n_pad``, not 0). The mask
        grows by a column of ones per step and each row's positions continue its own count. A
        batch without padding passes neither (the runtime's all-ones default: ORT's decode
        steps then write no mask). A row that emitted a stop token keeps being fed (its
        outputs are dropped) until all stop.
        """
        if not self.batched_generation or len(prompts) == 1:
            return [self.greedy_generate(p, max_new_tokens, stop_ids) for p in prompts]
        lengths = [len(p) for p in prompts]
        if min(lengths) < 1:
            raise ValueError("empty prompt")
        if max(lengths) + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({max(lengths)}) + {max_new_tokens} new tokens exceeds "
                             f"{self.max_length} positions")
        if self.padding_side == "right":
            return self._generate_right_padded(prompts, max_new_tokens, stop_ids)
        width = max(lengths)
        padded = min(lengths) < width
        ids = np.zeros((len(prompts), width), dtype=np.int64)
        # the whole generation's mask at once: each step passes a view of its first columns
        mask = np.ones((len(prompts), width + max_new_tokens), dtype=np.int64)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = p
            mask[i, : width - len(p)] = 0
        positions = positions_from_mask(mask[:, :width], width)  # 0 at each first token
        logits, past = self.forward(ids, attention_mask=mask[:, :width] if padded else None,
                                    position_ids=positions if padded else None,
                                    last_only=True)
        last = positions[:, -1:]  # (B, 1)

        def step_inputs(step: int):  # the mask grows by a column, each row's count goes on
            if not padded:
                return None, None
            return mask[:, : width + step + 1], last + 1 + step

        return self._greedy_steps(logits, past, len(prompts), max_new_tokens, stop_ids,
                                  step_inputs)

    def _generate_right_padded(self, prompts: list[list[int]], max_new_tokens: int,
                               stop_ids: frozenset[int]) -> list[list[int]]:
        """``greedy_generate_batch`` for graphs with fused attention: prompts RIGHT-padded.

        Row b's n_b real tokens sit at positions 0..n_b-1; the graph takes each row's length
        from the mask (ones, then zeros), attends to that row's positions only and returns the
        logits of each row's last real token. Its t-th new token goes to position n_b + t, in
        the row's own slot of the cache, so the mask at a step has n_b + t + 1 ones in a
        (B, width + t + 1) array (the cache's length is the longest row's).
        """
        lengths = np.array([len(p) for p in prompts])
        width = int(lengths.max())
        padded = bool((lengths < width).any())
        ids = np.zeros((len(prompts), width), dtype=np.int64)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = p

        def mask(extra: int) -> np.ndarray | None:  # after ``extra`` new tokens
            if not padded:
                return None
            return self._right_mask(list(lengths + extra), width + extra)

        logits, past = self.forward(ids, attention_mask=mask(0), last_only=True)

        def step_inputs(step: int):
            if not padded:
                return None, None
            return mask(step + 1), (lengths + step)[:, None]

        return self._greedy_steps(logits, past, len(prompts), max_new_tokens, stop_ids,
                                  step_inputs)

    def _greedy_steps(self, logits, past, rows: int, max_new_tokens: int,
                      stop_ids: frozenset[int], step_inputs) -> list[list[int]]:
        """The decode loop of a batched greedy generation after its prefill (``logits``,
        ``past``): each row takes its argmax until its stop token or ``max_new_tokens``; a row
        that stopped is still fed (its outputs dropped) until all stop. ``step_inputs(step)``
        gives that decode step's (attention_mask, position_ids), None for an unpadded batch.
        """
        new: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        for step in range(max_new_tokens):
            tokens = logits[:, -1].argmax(-1)  # (B,), the backend's array type
            for i, t in enumerate(tokens.tolist()):
                if not done[i]:
                    new[i].append(t)
                    done[i] = t in stop_ids or len(new[i]) == max_new_tokens
            if all(done):
                break
            mask, positions = step_inputs(step)
            logits, past = self.forward(tokens[:, None], past, attention_mask=mask,
                                        position_ids=positions, last_only=True)
        return new

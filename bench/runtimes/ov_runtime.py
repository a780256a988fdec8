"""OpenVINO backend: the ``CausalLM`` protocol over a stateful IR (``export_openvino``).

The KV cache is the infer request's state, never handed to Python: a call continues the
sequence its request holds, which is how OpenVINO runs decoders. The protocol's ``past`` is
a ticket to one request at one step: only the newest ticket of a request can be continued (a
stale one is refused, not silently run on a cache that moved on), as for every runtime.
Sequences under way at once (the paired A/B keeps a decode per slot) each get a request of
their own; a request whose newest ticket is gone is reused for the next prefill. Scoring
(``keep_cache=False`` without a past) runs on a request of its own, so it leaves every
sequence's cache alone.
"""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np

from slimbench.bench.runtimes.base import RuntimeBase, all_logprobs, picked_logprobs
from slimbench.compress.arch import max_positions
from slimbench.compress.loader import LoadedModel
from slimbench.compress.openvino_model import ov_feeds


@dataclasses.dataclass(eq=False)
class OvPast:
    """A sequence's cache: ``length`` positions in ``request``'s state after step ``step``."""

    request: object
    length: int
    batch: int
    step: int


class OvRuntime(RuntimeBase):
    """Runs an OpenVINO artifact compiled once (threads fixed) with one infer request per
    sequence under way."""

    backend = "openvino"
    batched_generation = True

    def __init__(self, loaded: LoadedModel, threads: int | None = None) -> None:
        self.ov = loaded.model
        self.info = loaded.info
        self.device = "cpu"
        self.compiled = self.ov.compile(threads)
        cfg = self.ov.config
        self.max_length = max_positions(cfg)
        self.vocab_size = int(cfg.vocab_size)
        self._scoring = self.compiled.create_infer_request()
        # request -> weak reference to its newest ticket (dead: the request is free)
        self._requests: dict[object, weakref.ref] = {}
        self._steps: dict[int, int] = {}  # id(request) -> its newest step

    def _free_request(self):
        for request, newest in self._requests.items():
            if newest() is None:
                return request
        request = self.compiled.create_infer_request()
        self._requests[request] = lambda: None
        return request

    def forward(self, input_ids, past: OvPast | None = None, keep_cache: bool = True,
                attention_mask=None, position_ids=None, last_only: bool = False):
        """One call; returns (logits as a numpy array, the new ticket or None). See
        ``CausalLM.forward``."""
        ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = ids.shape
        past_len = past.length if past is not None else 0
        if past_len + seq > self.max_length:
            raise ValueError(f"{past_len + seq} positions exceed the model's {self.max_length}")
        if past is not None and (self._steps.get(id(past.request)) != past.step
                                 or past.batch != batch):
            raise ValueError("stale or mismatched KV cache: only the cache returned by the "
                             "latest forward call of its sequence can be continued (an "
                             "OpenVINO request's cache is its state and moves on)")
        feeds = ov_feeds(ids, past_len, attention_mask, position_ids, last_only)
        if past is None and not keep_cache:
            self._scoring.reset_state()
            return self._scoring.infer(feeds)["logits"].copy(), None
        if past is None:
            request = self._free_request()
            request.reset_state()
        else:
            request = past.request
        logits = request.infer(feeds)["logits"].copy()
        step = self._steps.get(id(request), 0) + 1
        self._steps[id(request)] = step  # any older ticket of this request is now stale
        if not keep_cache:
            self._requests[request] = lambda: None
            return logits, None
        ticket = OvPast(request, past_len + seq, batch, step)
        self._requests[request] = weakref.ref(ticket)
        return logits, ticket

    def sync(self) -> None:
        """Nothing to wait for: ``infer`` returns when the request is done."""

    def placement(self) -> None:
        """OpenVINO's CPU plugin runs the whole graph; there is nothing to place."""
        return None

    def _scored(self, batch: list[list[int]]):
        ids, lengths = self._padded(batch)
        mask = self._right_mask(lengths, ids.shape[1])
        logits, _ = self.forward(ids, keep_cache=False, attention_mask=mask)
        return ids, lengths, logits

    def token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        return picked_logprobs(*self._scored(batch))

    def next_token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        _, lengths, logits = self._scored(batch)
        return all_logprobs(lengths, logits)

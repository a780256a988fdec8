"""OpenVINO backend: the ``CausalLM`` protocol over a stateful IR (``export_openvino``).

The KV cache is the infer request's state, never handed to Python: a call continues the
sequence its request holds, which is how OpenVINO runs decoders. The protocol's ``past`` is
a ticket to one request at one step: only the newest ticket of a request can be continued (a
stale one is refused, not silently run on a cache that moved on), as for every runtime.
Sequences under way at once (the paired A/B keeps a decode per slot) each get a request of
their own; a request whose newest ticket is gone is reused for the next prefill. Scoring
(``keep_cache=False`` without a past) runs on a request of its own, so it leaves every
sequence's cache alone. Why the IR is compiled twice: see ``OvRuntime``.
"""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np

from slimbench.bench.runtimes.base import ForwardScoring, RuntimeBase
from slimbench.compress.arch import max_positions
from slimbench.compress.loader import LoadedModel
from slimbench.compress.openvino_model import ov_feeds


def _gone() -> None:
    """A dead ticket reference: the request is free."""
    return None


@dataclasses.dataclass(eq=False)
class OvPast:
    """A sequence's cache: ``length`` positions in ``request``'s state after step ``step``;
    ``graph``: which compiled graph the request belongs to (``last`` or ``full``)."""

    request: object
    graph: str
    length: int
    batch: int
    step: int


class OvRuntime(ForwardScoring, RuntimeBase):
    """Runs an OpenVINO artifact with one infer request per sequence under way.

    The IR is compiled twice, the second lazily: ``last`` with its logits index fixed to the
    last position (``last_position``: what generation, and every latency scenario, runs), and
    ``full`` with the index as an input, for calls that want every position's logits (scoring,
    a prompt's logits). A sequence begun on one that needs the other has its cache copied
    over (OpenVINO's variable states), so every call answers what the protocol says. The cell
    reads its memory before the quality tasks, so the second graph does not inflate it.
    """

    backend = "openvino"
    batched_generation = True

    def __init__(self, loaded: LoadedModel, threads: int | None = None) -> None:
        self.ov = loaded.model
        self.info = loaded.info
        self.device = "cpu"
        self._threads = threads
        self._graphs = {"last": self.ov.compile(threads, last_only=True), "full": None}
        cfg = self.ov.config
        self.max_length = max_positions(cfg)
        self.vocab_size = int(cfg.vocab_size)
        self._scoring: dict[str, object] = {}
        # request -> (its graph, weak reference to its newest ticket: dead when it is free)
        self._requests: dict[object, tuple[str, weakref.ref]] = {}
        self._steps: dict[int, int] = {}  # id(request) -> its newest step

    def _graph(self, graph: str):
        if self._graphs[graph] is None:
            self._graphs[graph] = self.ov.compile(self._threads)
        return self._graphs[graph]

    def _free_request(self, graph: str):
        for request, (kind, newest) in self._requests.items():
            if kind == graph and newest() is None:
                return request
        request = self._graph(graph).create_infer_request()
        self._requests[request] = (graph, _gone)
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
        graph = "last" if last_only or seq == 1 else "full"
        if past is None and not keep_cache:
            if graph not in self._scoring:
                self._scoring[graph] = self._graph(graph).create_infer_request()
            request = self._scoring[graph]
            request.reset_state()
            return self._infer(request, graph, ids, 0, attention_mask, position_ids,
                               last_only), None
        if past is None:
            request = self._free_request(graph)
            request.reset_state()
        elif past.graph == "last" and graph == "full":  # every position's logits wanted
            request = self._free_request("full")
            states = {s.name: s.state for s in past.request.query_state()}
            for state in request.query_state():
                state.state = states[state.name]
        else:
            request, graph = past.request, past.graph
        logits = self._infer(request, graph, ids, past_len, attention_mask, position_ids,
                             last_only)
        step = self._steps.get(id(request), 0) + 1
        self._steps[id(request)] = step  # any older ticket of this request is now stale
        if past is not None and past.request is not request:
            self._steps[id(past.request)] = -1  # its sequence moved to the other graph
        if not keep_cache:
            self._requests[request] = (graph, _gone)
            return logits, None
        ticket = OvPast(request, graph, past_len + seq, batch, step)
        self._requests[request] = (graph, weakref.ref(ticket))
        return logits, ticket

    @staticmethod
    def _infer(request, graph: str, ids, past_len: int, mask, positions,
               last_only: bool) -> np.ndarray:
        feeds = ov_feeds(ids, past_len, mask, positions, None if graph == "last" else last_only)
        logits = request.infer(feeds)["logits"].copy()
        return logits[:, -1:] if last_only else logits

    def sync(self) -> None:
        """Nothing to wait for: ``infer`` returns when the request is done."""

    def placement(self) -> None:
        """OpenVINO's CPU plugin runs the whole graph; there is nothing to place."""
        return None

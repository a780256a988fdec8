"""CTranslate2 backend: its ``Generator`` behind the ``CausalLM`` protocol.

CTranslate2 keeps the KV cache inside its generator and picks each greedy token itself; it
offers no forward that takes a cache from outside. So this runtime declares
``external_cache = False``: ``forward`` scores without a cache (``forward_batch``: perplexity,
log-likelihoods, fidelity), and a generation is continued only through ``greedy_start`` /
``greedy_step``, which the latency scenarios use on every backend. Those run one
``generate_batch`` in lockstep with the caller: its per-token callback hands the token over
and then waits until the next step is asked for, so the engine computes exactly the steps
that are timed and nothing runs ahead (CTranslate2's own ``generate_tokens`` would generate
on in a background thread, also while the other side of a paired A/B is being timed).

Prompts go in as token strings (CTranslate2's generation takes no ids): the artifact's
vocabulary maps them. One generation runs at a time (one worker); starting another closes
the one under way, whose state is then refused. Batches generate through
``generate_batch`` at once (``greedy_generate_batch``); a batch's per-step timing is not
offered (``greedy_start`` takes one prompt).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import weakref

import numpy as np

from slimbench.bench.runtimes.base import ForwardScoring, RuntimeBase, cacheless_rows
from slimbench.compress.arch import max_positions
from slimbench.compress.loader import LoadedModel


@dataclasses.dataclass(eq=False)
class _Stream:
    """A generation under way: its tokens arrive on ``tokens``; ``permit`` lets the engine
    compute the next one; ``closed`` tells it to stop."""

    job: object
    tokens: queue.Queue
    permit: threading.Semaphore
    closed: threading.Event
    length: int
    step: int = 0

    def close(self) -> None:
        self.closed.set()
        self.permit.release()  # the waiting callback returns True: the job stops
        self.job.result()


def _close(holder: dict) -> None:
    """Stop the generation under way in ``holder``, if any."""
    stream, holder["stream"] = holder["stream"], None
    if stream is not None:
        stream.close()


class Ct2Runtime(ForwardScoring, RuntimeBase):
    """Runs a CTranslate2 artifact on one ``Generator`` (threads fixed, one worker)."""

    backend = "ctranslate2"
    batched_generation = True
    external_cache = False
    stepped_batch_limit = 1
    stepped_batch_why = ("CTranslate2 streams one prompt at a time: a batch's per-step times "
                         "are not offered")

    def __init__(self, loaded: LoadedModel, threads: int | None = None) -> None:
        self.ct2 = loaded.model
        self.info = loaded.info
        self.device = "cpu"
        self.generator = self.ct2.generator(threads)
        self.tokens = self.ct2.vocabulary()
        cfg = self.ct2.config
        self.max_length = max_positions(cfg)
        self.vocab_size = int(cfg.vocab_size)
        # the generation under way, in a holder that a finalizer closes at exit too: an open
        # one holds CTranslate2's worker in our callback, and the generator's destructor
        # would wait for it forever
        self._open: dict[str, _Stream | None] = {"stream": None}
        weakref.finalize(self, _close, self._open)

    @property
    def _stream(self) -> _Stream | None:
        return self._open["stream"]

    def forward(self, input_ids, past=None, keep_cache: bool = True, attention_mask=None,
                position_ids=None, last_only: bool = False):
        """Logits (B, T, V) of right-padded ``input_ids`` without a cache (``keep_cache`` must
        be False): CTranslate2 keeps its cache inside its generator (``greedy_start``)."""
        ids, lengths = cacheless_rows("CTranslate2", input_ids, past, keep_cache,
                                      attention_mask, position_ids)
        seq = ids.shape[1]
        rows = [row[:n].tolist() for row, n in zip(ids, lengths, strict=True)]
        logits = np.array(self.generator.forward_batch(rows))
        if logits.shape[1] < seq:  # CTranslate2 returns the longest row's width
            logits = np.pad(logits, ((0, 0), (0, seq - logits.shape[1]), (0, 0)))
        return (logits[:, -1:] if last_only else logits), None

    def greedy_start(self, prompt):
        """See ``CausalLM.greedy_start``; one prompt (a (1, T) batch) at a time."""
        ids = np.asarray(prompt.cpu() if hasattr(prompt, "cpu") else prompt, dtype=np.int64)
        if ids.shape[0] != 1:
            raise ValueError(f"{self.stepped_batch_why} (greedy_generate_batch generates it)")
        _close(self._open)
        tokens, permit, closed = queue.Queue(), threading.Semaphore(0), threading.Event()

        def step(result) -> bool:  # on CTranslate2's thread, after each token
            tokens.put(result.token_id)
            permit.acquire()  # hold the engine until the next step is asked for
            return closed.is_set()

        budget = self.max_length - ids.shape[1]
        job = self.generator.generate_batch(
            [[self.tokens[i] for i in ids[0]]], asynchronous=True, beam_size=1,
            sampling_topk=1, max_length=budget, min_length=budget,  # never stops early
            include_prompt_in_result=False, callback=step)[0]
        self._open["stream"] = stream = _Stream(job, tokens, permit, closed, ids.shape[1])
        return np.array([[tokens.get()]], dtype=np.int64), (stream, 0)

    def greedy_step(self, tokens, state):
        """See ``CausalLM.greedy_step``: the engine's next greedy token (it fed itself the
        previous one, which ``tokens`` is)."""
        stream, step = state
        if stream is not self._stream or step != stream.step or stream.closed.is_set():
            raise ValueError("stale generation state: CTranslate2 continues only the newest "
                             "generation, from its newest step")
        stream.step += 1
        stream.permit.release()
        return np.array([[stream.tokens.get()]], dtype=np.int64), (stream, stream.step)

    def greedy_generate(self, prompt: list[int], max_new_tokens: int,
                        stop_ids: frozenset[int] = frozenset()) -> list[int]:
        return self.greedy_generate_batch([prompt], max_new_tokens, stop_ids)[0]

    def greedy_generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                              stop_ids: frozenset[int] = frozenset()) -> list[list[int]]:
        """Greedy continuations by ``generate_batch``, one call per prompt length (CTranslate2
        forwards a batch's prompts only up to the shortest and generates the rest under a
        constraint, whose tokens count as generated ones): exactly ``max_new_tokens`` each,
        cut after the first stop token (as the other runtimes stop)."""
        if not prompts or min(len(p) for p in prompts) < 1:
            raise ValueError("empty prompt")
        if max(len(p) for p in prompts) + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({max(len(p) for p in prompts)}) + {max_new_tokens} new "
                             f"tokens exceeds {self.max_length} positions")
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_length.setdefault(len(p), []).append(i)
        out: list[list[int]] = [[] for _ in prompts]
        for rows in by_length.values():
            results = self.generator.generate_batch(
                [[self.tokens[t] for t in prompts[i]] for i in rows], beam_size=1,
                sampling_topk=1, max_length=max_new_tokens, min_length=max_new_tokens,
                include_prompt_in_result=False)
            for i, result in zip(rows, results, strict=True):
                ids = list(result.sequences_ids[0])
                cut = next((k + 1 for k, t in enumerate(ids) if t in stop_ids), len(ids))
                out[i] = ids[:cut]
        return out

    def sync(self) -> None:
        """Nothing to wait for: every call returns when its tokens or logits are there."""

    def placement(self) -> None:
        """CTranslate2 runs the whole model on its device; there is nothing to place."""
        return None

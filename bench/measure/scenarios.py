"""Latency scenarios over a runtime: prefill and per-token decode with a KV cache.

Inputs are deterministic (seeded token ids) and token counts fixed, so two runs of the same
cell do the same work.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from slimbench.bench.measure.timing import measurement, time_callable
from slimbench.reports.schema import Scenario
from slimbench.tasks.protocol import CausalLM


def _ids(vocab: int, length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def prefill_latency(rt: CausalLM, seq_len: int, batch: int = 1,
                    min_seconds: float = 1.0) -> Scenario:
    """Milliseconds for one forward pass over ``batch x seq_len`` prompt tokens, with logits
    for the last position only: what a generation's first step needs (the output projection
    over every position is a scoring cost, ~30% of a gpt2-size prefill's FLOPs)."""
    ids = _ids(rt.vocab_size, seq_len, batch)
    samples = time_callable(lambda: rt.forward(ids, last_only=True), min_seconds=min_seconds,
                            sync=rt.sync)
    return Scenario("prefill", f"{seq_len}" + (f"x{batch}" if batch > 1 else ""),
                    {"seq_len": seq_len, "batch": batch},
                    [measurement("prefill_ms", "ms", samples)])


def _rounds(warmup: int, repeats: int, min_seconds: float, max_rounds: int = 100_000):
    """Round indices: ``warmup`` untimed rounds, then timed rounds until both ``repeats`` of
    them and ``min_seconds`` of wall time. A short window of a fast model (64 ms for 160 decode
    steps of the reference) catches whatever state the host is in for that instant; on a
    shared host that moves its median by 2x between runs, a window of seconds averages it."""
    i, start = 0, None
    while i < max_rounds:
        if i == warmup:
            start = time.perf_counter()
        if i >= warmup + repeats and time.perf_counter() - start >= min_seconds:
            return
        yield i
        i += 1


def decode_latency(rt: CausalLM, context: int, new_tokens: int = 32, repeats: int = 5,
                   warmup: int = 1, min_seconds: float = 0.0) -> Scenario:
    """Milliseconds per generated token with a KV cache after a ``context``-token prompt.

    Each round prefills (untimed), then times ``new_tokens`` single-token steps one by one,
    so the figure excludes time to first token and its percentiles are per-token. Rounds
    repeat until ``repeats`` of them and ``min_seconds`` have passed.
    """
    if context + new_tokens > rt.max_length:
        raise ValueError(f"context {context} + {new_tokens} tokens exceeds {rt.max_length}")
    prompt = _ids(rt.vocab_size, context)
    samples = []
    rounds = 0
    for i in _rounds(warmup, repeats, min_seconds):
        logits, past = rt.forward(prompt, last_only=True)
        rt.sync()
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            logits, past = rt.forward(logits[:, -1:].argmax(-1), past)
            rt.sync()
            if i >= warmup:
                samples.append(time.perf_counter() - t0)
        rounds += i >= warmup
    return Scenario("decode", f"{context}",
                    {"context": context, "new_tokens": new_tokens, "repeats": rounds},
                    [measurement("decode_ms_per_token", "ms", samples)])


def timed_generation(rt: CausalLM, prompt, new_tokens: int, repeats: int = 5,
                     warmup: int = 1, min_seconds: float = 0.0) -> dict:
    """Greedy generation of exactly ``new_tokens`` per row of ``prompt`` (B, T) with the KV
    cache, repeated as ``_rounds`` says; per timed round:

    - ``ttft``: seconds from the call to the first token of every row (prefill of the B
      prompts + argmax);
    - ``tpot``: seconds per later decode step (one step advances all B rows);
    - ``rate``: tokens/s, ``B * new_tokens / (ttft + (new_tokens - 1) * tpot)``: the round's
      total time, so the identity holds per round up to float rounding.

    ``tokens``: the last round's greedy tokens, (B, new_tokens) int64, taken off the device
    after the clocks stop (a copy inside the loop would be timed).
    """
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 to separate first-token and per-token time")
    batch, prompt_len = prompt.shape
    if prompt_len + new_tokens > rt.max_length:
        raise ValueError(f"prompt {prompt_len} + {new_tokens} tokens exceeds {rt.max_length}")
    ttft, tpot, rate, steps = [], [], [], []
    for i in _rounds(warmup, repeats, min_seconds):
        rt.sync()  # nothing queued by the previous round may land in this one's clock
        t0 = time.perf_counter()
        logits, past = rt.forward(prompt, last_only=True)
        steps = [logits[:, -1:].argmax(-1)]
        rt.sync()
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            logits, past = rt.forward(steps[-1], past)
            steps.append(logits[:, -1:].argmax(-1))
        rt.sync()
        t2 = time.perf_counter()
        if i >= warmup:
            ttft.append(t1 - t0)
            tpot.append((t2 - t1) / (new_tokens - 1))
            rate.append(batch * new_tokens / (t2 - t0))
    tokens = np.concatenate([_numpy(t) for t in steps], axis=1).astype(np.int64)
    return {"ttft": ttft, "tpot": tpot, "rate": rate, "tokens": tokens}


def _numpy(x) -> np.ndarray:
    """A backend's array (torch tensor on any device, or numpy) as numpy."""
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def generate_latency(rt: CausalLM, prompt_len: int, new_tokens: int = 32, repeats: int = 5,
                     warmup: int = 1, min_seconds: float = 0.0, batch: int = 1) -> Scenario:
    """End-to-end greedy generation of exactly ``new_tokens`` (no early stop) for ``batch``
    equal-length seeded prompts: time to first token (prefill + first argmax), time per
    output token after it (per step of all rows), and tokens/s (all rows); repeated until
    ``repeats`` generations and ``min_seconds``. Tagged like prefill: ``64``, ``64x8``."""
    run = timed_generation(rt, _ids(rt.vocab_size, prompt_len, batch), new_tokens, repeats,
                           warmup, min_seconds)
    return Scenario("generate", f"{prompt_len}" + (f"x{batch}" if batch > 1 else ""),
                    {"prompt_len": prompt_len, "new_tokens": new_tokens, "batch": batch,
                     "repeats": len(run["ttft"])},
                    [measurement("ttft_ms", "ms", run["ttft"]),
                     measurement("tpot_ms", "ms", run["tpot"]),
                     measurement("tokens_per_s", "tok/s", run["rate"], scale=1.0,
                                 higher_is_better=True)])


def generate_sweep(rt: CausalLM, prompt_len: int, batches: tuple[int, ...] = (1, 4, 8, 16),
                   new_tokens: int = 32, repeats: int = 5, warmup: int = 1,
                   min_seconds: float = 0.0) -> list[Scenario]:
    """``generate_latency`` at each batch size: how throughput grows with batch while the
    per-step time (TPOT) grows less, as long as a decode step stays bound by streaming the
    weights. Prompts are equal-length (seeded ``_ids``: row 0 of every batch is the batch-1
    prompt), which every runtime batches without an attention mask."""
    return [generate_latency(rt, prompt_len, new_tokens, repeats, warmup, min_seconds, b)
            for b in batches]


def batch_sweep(rt: CausalLM, seq_len: int, batches: tuple[int, ...] = (1, 2, 4, 8),
                min_seconds: float = 1.0) -> list[Scenario]:
    """Prefill latency at each batch size (throughput = batch * seq_len / latency)."""
    out = []
    for b in batches:
        r = prefill_latency(rt, seq_len, batch=b, min_seconds=min_seconds)
        r.derived["tokens_per_s"] = b * seq_len / (r.measurement("prefill_ms").median / 1e3)
        out.append(r)
    return out

"""Latency scenarios over a runtime: prefill and per-token decode with a KV cache.

Inputs are deterministic (seeded token ids) and token counts fixed, so two runs of the same
cell do the same work.
"""

from __future__ import annotations

import time

import torch

from slimbench.bench.measure.timing import measurement, time_callable
from slimbench.reports.schema import Scenario
from slimbench.tasks.protocol import CausalLM


def _ids(vocab: int, length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def prefill_latency(rt: CausalLM, seq_len: int, batch: int = 1,
                    min_seconds: float = 1.0) -> Scenario:
    """Milliseconds for one forward pass over ``batch x seq_len`` prompt tokens."""
    ids = _ids(rt.vocab_size, seq_len, batch)
    samples = time_callable(lambda: rt.forward(ids), min_seconds=min_seconds, sync=rt.sync)
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
        logits, past = rt.forward(prompt)
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


def generate_latency(rt: CausalLM, prompt_len: int, new_tokens: int = 32, repeats: int = 5,
                     warmup: int = 1, min_seconds: float = 0.0) -> Scenario:
    """End-to-end greedy generation of exactly ``new_tokens`` (no early stop): time to first
    token (prefill + first argmax), time per output token after it, and tokens/s; repeated
    until ``repeats`` generations and ``min_seconds``."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 to separate first-token and per-token time")
    if prompt_len + new_tokens > rt.max_length:
        raise ValueError(f"prompt {prompt_len} + {new_tokens} tokens exceeds {rt.max_length}")
    prompt = _ids(rt.vocab_size, prompt_len)
    ttft, tpot, rate = [], [], []
    for i in _rounds(warmup, repeats, min_seconds):
        t0 = time.perf_counter()
        logits, past = rt.forward(prompt)
        token = logits[:, -1:].argmax(-1)
        rt.sync()
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            logits, past = rt.forward(token, past)
            token = logits[:, -1:].argmax(-1)
        rt.sync()
        t2 = time.perf_counter()
        if i >= warmup:
            ttft.append(t1 - t0)
            tpot.append((t2 - t1) / (new_tokens - 1))
            rate.append(new_tokens / (t2 - t0))
    return Scenario("generate", f"{prompt_len}",
                    {"prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": len(ttft)},
                    [measurement("ttft_ms", "ms", ttft), measurement("tpot_ms", "ms", tpot),
                     measurement("tokens_per_s", "tok/s", rate, scale=1.0,
                                 higher_is_better=True)])


def batch_sweep(rt: CausalLM, seq_len: int, batches: tuple[int, ...] = (1, 2, 4, 8),
                min_seconds: float = 1.0) -> list[Scenario]:
    """Prefill latency at each batch size (throughput = batch * seq_len / latency)."""
    out = []
    for b in batches:
        r = prefill_latency(rt, seq_len, batch=b, min_seconds=min_seconds)
        r.derived["tokens_per_s"] = b * seq_len / (r.measurement("prefill_ms").median / 1e3)
        out.append(r)
    return out

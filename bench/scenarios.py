"""Latency scenarios over a runtime: prefill and per-token decode with a KV cache.

Inputs are deterministic (seeded token ids) and token counts fixed, so two runs of the same
cell do the same work.
"""

from __future__ import annotations

import time

import torch

from slimbench.bench.timing import summarize, time_callable


def _ids(vocab: int, length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def prefill_latency(rt, seq_len: int, batch: int = 1, min_seconds: float = 1.0) -> dict:
    """Milliseconds for one forward pass over ``batch x seq_len`` prompt tokens."""
    ids = _ids(rt.vocab_size, seq_len, batch)
    samples = time_callable(lambda: rt.forward(ids), min_seconds=min_seconds, sync=rt._sync)
    return {"scenario": "prefill", "seq_len": seq_len, "batch": batch, "ms": summarize(samples)}


def decode_latency(rt, context: int, new_tokens: int = 32, repeats: int = 5,
                   warmup: int = 1) -> dict:
    """Milliseconds per generated token with a KV cache after a ``context``-token prompt.

    Each repeat prefills (untimed), then times ``new_tokens`` single-token steps; the sample
    is their mean, so the figure excludes time to first token.
    """
    if context + new_tokens > rt.max_length:
        raise ValueError(f"context {context} + {new_tokens} tokens exceeds {rt.max_length}")
    prompt = _ids(rt.vocab_size, context)
    samples = []
    for i in range(warmup + repeats):
        logits, past = rt.forward(prompt)
        rt._sync()
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            token = logits[:, -1:].argmax(-1)
            logits, past = rt.forward(token, past)
        rt._sync()
        if i >= warmup:
            samples.append((time.perf_counter() - t0) / new_tokens)
    return {"scenario": "decode", "context": context, "new_tokens": new_tokens,
            "ms_per_token": summarize(samples)}

"""Sliding-window perplexity and bits-per-byte with the protocol stated in the result.

Protocol (stored with every score): each text is tokenized on its own and, when ``bos`` is
set, prefixed with the BOS token so that every text token is predicted. Windows of at most
``context_length`` tokens start every ``stride`` tokens; each token is scored exactly once,
in the first window that predicts it after the previous window ended, so every scored token
beyond the first window sees at least ``context_length - stride`` tokens of context (the
Hugging Face "perplexity of fixed-length models" recipe).
"""

from __future__ import annotations

import dataclasses
import math

from tqdm import tqdm

from slimbench.errors import UsageError
from slimbench.log import quiet_progress
from slimbench.tasks.protocol import CausalLM


@dataclasses.dataclass(frozen=True)
class PerplexityConfig:
    context_length: int = 256
    stride: int = 128
    bos: bool = True
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.context_length < 2:
            raise UsageError(f"context_length must be >= 2, got {self.context_length}")
        if not 1 <= self.stride <= self.context_length - 1:
            raise UsageError(f"stride must be in [1, context_length-1], got {self.stride}")
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")


def windows(n_tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_target)`` per window over ``n_tokens`` ids.

    The window is ``ids[begin:end]``; it scores targets ``first_target .. end-1``.
    """
    out, done, begin = [], 1, 0
    while done < n_tokens:
        end = min(begin + context_length, n_tokens)
        first = max(done, begin + 1)
        if end > first:
            out.append((begin, end, first))
        done = end
        begin += stride
    return out


def perplexity(lm: CausalLM, tokenizer, texts: list[str],
               config: PerplexityConfig = PerplexityConfig(), show_progress: bool = False) -> dict:
    """Token perplexity and bits per byte of ``texts`` under ``lm``.

    Returns:
        dict with ``perplexity``, ``bits_per_byte``, ``nll_nats``, ``tokens`` (scored),
        ``bytes`` and ``protocol``.
    """
    if config.context_length > lm.max_length:
        raise UsageError(f"context_length {config.context_length} exceeds the model's "
                         f"maximum of {lm.max_length} positions")
    bos = tokenizer.bos_token_id if config.bos else None
    if config.bos and bos is None:
        raise UsageError("the tokenizer has no BOS token; set bos: false")
    jobs = []  # (window ids, offset of first target within the window's logprobs)
    n_bytes = 0
    for text in texts:
        ids = ([bos] if config.bos else []) + tokenizer(text)["input_ids"]
        n_bytes += len(text.encode("utf-8"))
        for begin, end, first in windows(len(ids), config.context_length, config.stride):
            jobs.append((ids[begin:end], first - begin - 1))
    nll, count = 0.0, 0
    bar = tqdm(total=len(jobs), desc="perplexity", unit="win",
               disable=quiet_progress(show_progress))
    for i in range(0, len(jobs), config.batch_size):
        chunk = jobs[i: i + config.batch_size]
        for (_, skip), lp in zip(chunk, lm.token_logprobs([w for w, _ in chunk]), strict=True):
            nll -= float(lp[skip:].sum())
            count += len(lp) - skip
        bar.update(len(chunk))
    bar.close()
    if count == 0:
        raise UsageError("no tokens to score: texts are empty or shorter than two tokens")
    return {
        "perplexity": math.exp(nll / count),
        "bits_per_byte": nll / math.log(2) / n_bytes,
        "nll_nats": nll, "tokens": count, "bytes": n_bytes, "windows": len(jobs),
        "protocol": dataclasses.asdict(config) | {"unit": "token", "texts": len(texts)},
    }


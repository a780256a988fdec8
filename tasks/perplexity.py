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
from typing import Any

import numpy as np
from tqdm import tqdm

from slimbench.errors import UsageError
from slimbench.log import quiet_progress
from slimbench.tasks.protocol import CausalLM
from slimbench.tasks.scorers import PERPLEXITY_METRICS


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


def window_jobs(tokenizer, texts: list[str], config: PerplexityConfig,
                max_length: int) -> list[tuple[int, list[int], int]]:
    """``(text index, window ids, offset of the first scored target in the window's
    next-token predictions)`` for every window of every text; shared with fidelity, so that
    both score exactly the same positions."""
    if config.context_length > max_length:
        raise UsageError(f"context_length {config.context_length} exceeds the model's "
                         f"maximum of {max_length} positions")
    bos = tokenizer.bos_token_id if config.bos else None
    if config.bos and bos is None:
        raise UsageError("the tokenizer has no BOS token; set bos: false")
    jobs = []
    for t, text in enumerate(texts):
        ids = ([bos] if config.bos else []) + tokenizer(text)["input_ids"]
        for begin, end, first in windows(len(ids), config.context_length, config.stride):
            jobs.append((t, ids[begin:end], first - begin - 1))
    return jobs


def per_text_nll(lm: CausalLM, tokenizer, texts: list[str],
                 config: PerplexityConfig = PerplexityConfig(),
                 show_progress: bool = False) -> tuple[np.ndarray, int]:
    """(len(texts), 3) rows of (NLL nats, scored tokens, utf-8 bytes), and the window count."""
    jobs = window_jobs(tokenizer, texts, config, lm.max_length)
    rows = np.zeros((len(texts), 3))
    rows[:, 2] = [len(text.encode("utf-8")) for text in texts]
    bar = tqdm(total=len(jobs), desc="perplexity", unit="win",
               disable=quiet_progress(show_progress))
    for i in range(0, len(jobs), config.batch_size):
        chunk = jobs[i: i + config.batch_size]
        for (t, _, skip), lp in zip(chunk, lm.token_logprobs([w for _, w, _ in chunk]),
                                    strict=True):
            rows[t, 0] -= float(lp[skip:].sum())
            rows[t, 1] += len(lp) - skip
        bar.update(len(chunk))
    bar.close()
    if rows[:, 1].sum() == 0:
        raise UsageError("no tokens to score: texts are empty or shorter than two tokens")
    return rows, len(jobs)


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """Perplexity figures of a set of texts and the protocol they were measured under.

    Attributes:
        metrics: every metric of ``PERPLEXITY_METRICS`` (where they are defined) over all
            texts, by name: ``perplexity`` (exp of the NLL per token), ``bits_per_byte``.
        nll_nats: summed negative log-likelihood of the scored tokens, in nats.
        tokens: tokens scored.
        bytes: the texts' length in utf-8 bytes.
        windows: windows run.
        protocol: the ``PerplexityConfig`` as run, with the scoring ``unit`` and ``texts``.
    """

    metrics: dict[str, float]
    nll_nats: float
    tokens: int
    bytes: int
    windows: int
    protocol: dict[str, Any]

    @property
    def perplexity(self) -> float:
        return self.metrics["perplexity"]

    @property
    def bits_per_byte(self) -> float:
        return self.metrics["bits_per_byte"]

    def to_dict(self) -> dict[str, Any]:
        """Plain values, metrics first: a perplexity task's ``QualityScore.scores``."""
        return {**self.metrics, "nll_nats": self.nll_nats, "tokens": self.tokens,
                "bytes": self.bytes, "windows": self.windows, "protocol": self.protocol}


def perplexity_scores(rows: np.ndarray, n_windows: int,
                      config: PerplexityConfig) -> PerplexityResult:
    """Every perplexity metric over all of ``rows`` (``per_text_nll``'s), with the totals and
    the protocol they were measured under."""
    return PerplexityResult(
        metrics={name: scorer.aggregate(rows) for name, scorer in PERPLEXITY_METRICS.items()},
        nll_nats=float(rows[:, 0].sum()), tokens=int(rows[:, 1].sum()),
        bytes=int(rows[:, 2].sum()), windows=n_windows,
        protocol=dataclasses.asdict(config) | {"unit": "token", "texts": len(rows)})


def perplexity(lm: CausalLM, tokenizer, texts: list[str],
               config: PerplexityConfig = PerplexityConfig(),
               show_progress: bool = False) -> PerplexityResult:
    """Token perplexity and bits per byte of ``texts`` under ``lm``."""
    rows, n_windows = per_text_nll(lm, tokenizer, texts, config, show_progress)
    return perplexity_scores(rows, n_windows, config)

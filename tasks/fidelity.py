"""Fidelity of a variant (compressed) model to its baseline: cheap and sensitive.

On the perplexity text, over exactly the positions perplexity scores (same windows):
- top-1 agreement: how often both models' most likely next token is the same;
- mean KL(baseline || variant) of the next-token distributions, in nats per position.
On the first ``prompt_tokens`` tokens of ``prompts`` texts: how often the greedy continuations
of ``new_tokens`` tokens are identical (exact match).

A task score can stay flat while the distribution drifts; these catch the drift first.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from tqdm import tqdm

from slimbench.errors import UsageError
from slimbench.log import quiet_progress
from slimbench.schema import Fidelity
from slimbench.tasks.bootstrap import RESAMPLES, SEED, bootstrap_ci
from slimbench.tasks.perplexity import PerplexityConfig, window_jobs
from slimbench.tasks.protocol import CausalLM


@dataclasses.dataclass(frozen=True)
class FidelityConfig:
    """Windows as for perplexity; greedy exact match on ``prompts`` prompts."""

    perplexity: PerplexityConfig = PerplexityConfig(batch_size=4)
    prompts: int = 32
    prompt_tokens: int = 64
    new_tokens: int = 32

    def __post_init__(self) -> None:
        for name in ("prompts", "prompt_tokens", "new_tokens"):
            if getattr(self, name) < 1:
                raise UsageError(f"fidelity {name} must be >= 1, got {getattr(self, name)}")


def distribution_stats(base_lp: np.ndarray, var_lp: np.ndarray) -> tuple[int, float]:
    """(positions where top-1 agrees, summed KL(base || var)) over (T, V) log-prob rows."""
    agree = int((base_lp.argmax(-1) == var_lp.argmax(-1)).sum())
    kl = float((np.exp(base_lp) * (base_lp - var_lp)).sum())
    return agree, kl


def _ratio(rows: np.ndarray) -> float:
    return float(rows[:, 0].sum() / rows[:, 1].sum())


def fidelity(variant: CausalLM, baseline: CausalLM, tokenizer, texts: list[str],
             config: FidelityConfig = FidelityConfig(), resamples: int = RESAMPLES,
             seed: int = SEED, show_progress: bool = False,
             baseline_spec: str = "baseline") -> Fidelity:
    """Agreement, KL and greedy exact match of ``variant`` against ``baseline``.

    Both must share the tokenizer. Intervals resample texts (agreement, KL) and prompts
    (exact match). ``baseline_spec`` names the baseline in the result (its model spec).
    """
    if tokenizer is None:
        raise UsageError("fidelity needs a tokenizer")
    t0 = time.perf_counter()
    cfg = config.perplexity
    jobs = window_jobs(tokenizer, texts, cfg, min(variant.max_length, baseline.max_length))
    rows = np.zeros((len(texts), 3))  # per text: agreeing positions, KL sum, positions
    bar = tqdm(total=len(jobs), desc="fidelity", unit="win",
               disable=quiet_progress(show_progress))
    for i in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[i: i + cfg.batch_size]
        windows = [w for _, w, _ in chunk]
        for (t, w, skip), b, v in zip(chunk, baseline.next_token_logprobs(windows),
                                      variant.next_token_logprobs(windows), strict=True):
            # row j predicts token j+1; scored targets first..end-1 are rows skip..T-2
            agree, kl = distribution_stats(b[skip: len(w) - 1], v[skip: len(w) - 1])
            rows[t] += (agree, kl, len(w) - 1 - skip)
        bar.update(len(chunk))
    bar.close()
    if rows[:, 2].sum() == 0:
        raise UsageError("no tokens to compare: texts are empty or shorter than two tokens")

    prompts = [ids[: config.prompt_tokens] for ids in
               (tokenizer(text)["input_ids"] for text in texts)
               if len(ids) >= config.prompt_tokens][: config.prompts]
    if not prompts:
        raise UsageError(f"no text has {config.prompt_tokens} tokens for a greedy prompt")
    if config.prompt_tokens + config.new_tokens > min(variant.max_length, baseline.max_length):
        raise UsageError("prompt_tokens + new_tokens exceed the models' maximum length")
    base_new = baseline.greedy_generate_batch(prompts, config.new_tokens)
    var_new = variant.greedy_generate_batch(prompts, config.new_tokens)
    same = np.array([[a == b] for a, b in zip(base_new, var_new, strict=True)], np.float64)

    agreement = bootstrap_ci(rows[:, [0, 2]], _ratio, resamples, seed).to_dict()
    kl = bootstrap_ci(rows[:, [1, 2]], _ratio, resamples, seed).to_dict()
    exact = bootstrap_ci(same, lambda r: float(r.mean()), resamples, seed).to_dict()
    return Fidelity.from_fidelity({
        "baseline": baseline_spec,
        "top1_agreement": agreement | {"higher_is_better": True, "resampled": "texts"},
        "kl_nats": kl | {"higher_is_better": False, "resampled": "texts",
                         "direction": "KL(baseline || variant)"},
        "greedy_exact_match": exact | {"higher_is_better": True, "resampled": "prompts"},
        "positions": int(rows[:, 2].sum()), "windows": len(jobs), "prompts": len(prompts),
        "protocol": dataclasses.asdict(config) | {"texts": len(texts)},
        "seconds": time.perf_counter() - t0,
    })

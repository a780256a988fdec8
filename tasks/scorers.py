"""Each metric as per-example sufficient statistics plus an aggregate over a set of rows.

Splitting a metric this way gives the point estimate (aggregate over all rows) and the
bootstrap interval (aggregate over resampled rows) from one definition. Corpus metrics stay
corpus metrics under resampling: BLEU re-aggregates sacrebleu's n-gram counts, subtoken F1 its
tp/fp/fn counts, perplexity the per-text NLL sums and token counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from slimbench.tasks import metrics


@dataclasses.dataclass(frozen=True)
class Scorer:
    """``stats(predictions, references, **options) -> (n, k)`` array; ``aggregate(rows,
    **options) -> float``; ``options``: allowed option names with their defaults."""

    stats: Callable[..., np.ndarray]
    aggregate: Callable[..., float]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    info: Callable[..., dict] = lambda **_: {}


def _mean(rows: np.ndarray, **_) -> float:
    return float(rows[:, 0].mean()) if len(rows) else 0.0


def _subtoken_stats(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(preds), 3))
    for i, (pred, ref) in enumerate(zip(preds, refs, strict=True)):
        p, r = metrics.subtokens(pred), metrics.subtokens(ref)
        out[i] = (sum(t in r for t in p), sum(t not in r for t in p), sum(t not in p for t in r))
    return out


def _subtoken_f1(rows: np.ndarray) -> float:
    tp, fp, fn = rows.sum(0)
    # same ratios as metrics.subtoken_f1 (micro-averaged over the rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 100 * 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _bleu(tokenize: str, lowercase: bool) -> BLEU:
    return BLEU(tokenize=tokenize, lowercase=lowercase)


def _bleu_stats(preds, refs, tokenize="13a", lowercase=False) -> np.ndarray:
    # sacrebleu's own paired bootstrap (sacrebleu.significance) resamples these per-sentence
    # statistics the same way; the method is private, so a test pins it to corpus_score
    stats = _bleu(tokenize, lowercase)._extract_corpus_statistics(list(preds), [list(refs)])
    return np.asarray(stats, dtype=np.int64).reshape(len(preds), -1)


def _bleu_value(rows: np.ndarray, tokenize="13a", lowercase=False) -> float:
    bleu = _bleu(tokenize, lowercase)
    return float(bleu._compute_score_from_stats(rows.sum(0).tolist()).score)


def _bleu_info(tokenize="13a", lowercase=False) -> dict:
    bleu = _bleu(tokenize, lowercase)
    bleu.corpus_score(["a"], [["a"]])  # the signature carries the version once scored
    return {"signature": str(bleu.get_signature())}


@lru_cache(maxsize=4)
def _rouge_table(preds: tuple[str, ...], refs: tuple[str, ...], use_stemmer: bool) -> dict:
    """ROUGE-1/2/L F-measures x100 per example, computed once for all three metrics."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    table = {"rouge1": [], "rouge2": [], "rougeL": []}
    for pred, ref in zip(preds, refs, strict=True):
        s = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for k in table:
            table[k].append(100 * s[k].fmeasure)
    return {k: np.asarray(v, dtype=np.float64) for k, v in table.items()}


def _rouge(key: str) -> Scorer:
    def stats(preds, refs, use_stemmer=True):
        return _rouge_table(tuple(preds), tuple(refs), bool(use_stemmer))[key][:, None]

    return Scorer(stats, _mean, {"use_stemmer": True},
                  lambda use_stemmer=True: {"use_stemmer": bool(use_stemmer)})


def _macro_stats(preds, refs) -> np.ndarray:
    labels = {x: i for i, x in enumerate(sorted(set(refs) | set(preds)))}
    return np.asarray([(labels[p], labels[r]) for p, r in zip(preds, refs, strict=True)],
                      dtype=np.int64).reshape(len(preds), 2)


def _macro_value(rows: np.ndarray) -> float:
    # labels seen in the (resampled) rows, as metrics.macro_f1 does on strings
    return metrics.macro_f1(rows[:, 0].tolist(), rows[:, 1].tolist())["macro_f1"]


METRICS: dict[str, Scorer] = {
    "f1": Scorer(_subtoken_stats, _subtoken_f1),
    "squad_f1": Scorer(lambda p, r: 100 * np.asarray(
        [metrics.squad_example_f1(a, b) for a, b in zip(p, r, strict=True)])[:, None], _mean),
    "exact_match": Scorer(lambda p, r: 100 * np.asarray(
        [metrics.normalize_answer(a) == metrics.normalize_answer(b)
         for a, b in zip(p, r, strict=True)], dtype=np.float64)[:, None], _mean),
    "macro_f1": Scorer(_macro_stats, _macro_value),
    "bleu": Scorer(_bleu_stats, _bleu_value, {"tokenize": "13a", "lowercase": False},
                   _bleu_info),
    "rouge1": _rouge("rouge1"),
    "rouge2": _rouge("rouge2"),
    "rougeL": _rouge("rougeL"),
}

# perplexity metrics take per-text rows (nll nats, scored tokens, utf-8 bytes) instead
PERPLEXITY_METRICS: dict[str, Scorer] = {
    "perplexity": Scorer(lambda rows: rows,
                         lambda rows: math.exp(rows[:, 0].sum() / rows[:, 1].sum())),
    "bits_per_byte": Scorer(lambda rows: rows,
                            lambda rows: float(rows[:, 0].sum() / math.log(2) / rows[:, 2].sum())),
}


def with_defaults(scorer: Scorer, options: dict) -> dict:
    return scorer.options | dict(options)

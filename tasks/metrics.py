"""Quality metrics. BLEU and ROUGE come from sacrebleu and rouge-score, not re-implementations."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

_SUBTOKEN = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def subtokens(identifier: str) -> list[str]:
    """Split an identifier into lower-case subtokens: ``getHTTPResponse_code2`` ->
    ``['get', 'http', 'response', 'code', '2']``."""
    return [t.lower() for t in _SUBTOKEN.findall(identifier)]


def subtoken_f1(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Micro-averaged subtoken precision, recall and F1 (code2seq's method-name metric).

    Written here because no maintained library ships code2seq's definition: per example, each
    predicted subtoken found in the reference is a true positive, else a false positive; each
    reference subtoken missing from the prediction is a false negative; counts are summed over
    the corpus before the ratios are taken. Values are in [0, 100].
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    tp = fp = fn = 0
    for pred, ref in zip(predictions, references, strict=True):
        p, r = subtokens(pred), subtokens(ref)
        tp += sum(t in r for t in p)
        fp += sum(t not in r for t in p)
        fn += sum(t not in p for t in r)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1}


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """sacrebleu corpus BLEU (one reference per example) with its signature."""
    metric = BLEU()
    score = metric.corpus_score(list(predictions), [list(references)])
    return {"bleu": score.score, "signature": str(metric.get_signature())}


def rouge(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> dict:
    """Mean ROUGE-1/2/L F-measure (x100) over examples, via rouge-score."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for k in totals:
            totals[k] += scores[k].fmeasure
    n = max(1, len(predictions))
    return {k: 100 * v / n for k, v in totals.items()} | {"use_stemmer": use_stemmer}

"""Quality metrics. BLEU and ROUGE come from sacrebleu and rouge-score, not re-implementations."""

from __future__ import annotations

import re
import string
from collections import Counter
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


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], tokenize: str = "13a",
                lowercase: bool = False) -> dict:
    """sacrebleu corpus BLEU (one reference per example) with its signature."""
    metric = BLEU(tokenize=tokenize, lowercase=lowercase)
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


# SQuAD v1.1's official normalisation (evaluate-v1.1.py), written out because the script is not
# a package: lower-case, drop punctuation, drop the articles a/an/the, fold whitespace.
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: ``"The  Cat's hat!"`` -> ``"cats hat"``."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_example_f1(prediction: str, reference: str) -> float:
    """Word-overlap F1 in [0, 1] after ``normalize_answer`` (bag of words, counts clipped).

    Two empty answers agree (1.0); one empty answer scores 0.0 (SQuAD v2's convention).
    """
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def squad_f1(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """SQuAD-style mean word F1 and exact match over examples, both x100."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    n = max(1, len(predictions))
    f1 = sum(map(squad_example_f1, predictions, references))
    em = sum(normalize_answer(p) == normalize_answer(r)
             for p, r in zip(predictions, references, strict=True))
    return {"squad_f1": 100 * f1 / n, "exact_match": 100 * em / n}


def macro_f1(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Macro-averaged F1 (x100) over the labels seen in references or predictions.

    Per label F1 = 2tp / (2tp + fp + fn), 0 where a label has no tp, fp or fn to speak of:
    scikit-learn's ``f1_score(average="macro", zero_division=0)``, without the dependency.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    labels = sorted(set(references) | set(predictions))
    per_label = {}
    for label in labels:
        tp = sum(p == label == r for p, r in zip(predictions, references, strict=True))
        fp = sum(p == label != r for p, r in zip(predictions, references, strict=True))
        fn = sum(r == label != p for p, r in zip(predictions, references, strict=True))
        per_label[label] = 100 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    value = sum(per_label.values()) / len(labels) if labels else 0.0
    return {"macro_f1": value, "per_label": per_label}

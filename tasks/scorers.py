"""Every quality metric, defined once: the ``METRICS``, ``PERPLEXITY_METRICS`` and
``CHOICE_METRICS`` registries.

This module is the one place a metric is defined. A metric is a ``Scorer``: per-example
sufficient statistics plus an aggregate over a set of rows. Splitting a metric this way gives
the point estimate (aggregate over all rows) and the bootstrap interval (aggregate over
resampled rows) from one definition. Corpus metrics stay corpus metrics under resampling: BLEU
re-aggregates sacrebleu's n-gram counts, subtoken F1 its tp/fp/fn counts, perplexity the
per-text NLL sums and token counts. BLEU and ROUGE come from sacrebleu and rouge-score, not
re-implementations.

To add a metric: write its ``stats`` and ``aggregate`` and ``add`` it to ``METRICS``
(generation tasks), ``PERPLEXITY_METRICS`` (per-text NLL rows) or ``CHOICE_METRICS``
(multiple-choice records: per-choice log-likelihoods), here or from a plugin
(``slimbench/registry.py``); a task YAML can then name it in ``metric_list`` with its
``higher_is_better``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from slimbench.registry import Registry


@dataclasses.dataclass(frozen=True)
class Scorer:
    """One metric.

    Attributes:
        stats: ``(predictions, references, **options) -> (n, k)`` array, one row per example.
        aggregate: ``(rows, **options) -> float``, the metric over a set of rows.
        options: allowed option names with their defaults (``use_stemmer`` for ROUGE...).
        info: ``(**options) -> dict`` recorded beside the value (BLEU's signature...).
        per_example: whether one row alone is a meaningful score (macro-F1's is not).
    """

    stats: Callable[..., np.ndarray]
    aggregate: Callable[..., float]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    info: Callable[..., dict] = lambda **_: {}
    per_example: bool = True


def with_defaults(scorer: Scorer, options: dict[str, Any]) -> dict[str, Any]:
    """A task's options for ``scorer`` (by option name), its defaults filling the rest."""
    return scorer.options | dict(options)


def compute(metric: str, predictions: Sequence[str], references: Sequence[str],
            **options) -> float:
    """Metric ``metric`` of ``METRICS`` over a whole set of predictions (no interval)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = METRICS[metric]
    opts = with_defaults(scorer, options)
    return scorer.aggregate(scorer.stats(predictions, references, **opts), **opts)


def _mean(rows: np.ndarray, **_) -> float:
    return float(rows[:, 0].mean()) if len(rows) else 0.0


# --- subtoken F1 (code2seq's method-name metric) -------------------------------------------
_SUBTOKEN = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def subtokens(identifier: str) -> list[str]:
    """Split an identifier into lower-case subtokens: ``getHTTPResponse_code2`` ->
    ``['get', 'http', 'response', 'code', '2']``."""
    return [t.lower() for t in _SUBTOKEN.findall(identifier)]


def _subtoken_stats(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """(tp, fp, fn) per example: a predicted subtoken found in the reference is a true
    positive, else a false positive; a reference subtoken missing from the prediction is a
    false negative. Written here because no maintained library ships code2seq's definition."""
    out = np.zeros((len(preds), 3))
    for i, (pred, ref) in enumerate(zip(preds, refs, strict=True)):
        p, r = subtokens(pred), subtokens(ref)
        out[i] = (sum(t in r for t in p), sum(t not in r for t in p), sum(t not in p for t in r))
    return out


def _subtoken_f1(rows: np.ndarray) -> float:
    """Micro-averaged F1 in [0, 100]: counts are summed over the rows before the ratios."""
    tp, fp, fn = rows.sum(0)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 100 * 2 * precision * recall / (precision + recall) if precision + recall else 0.0


# --- BLEU (sacrebleu) ------------------------------------------------------------------------
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


# --- ROUGE (rouge-score) ---------------------------------------------------------------------
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
    """Mean ROUGE F-measure over examples (not pooled), stemming on by default."""
    def stats(preds, refs, use_stemmer=True):
        return _rouge_table(tuple(preds), tuple(refs), bool(use_stemmer))[key][:, None]

    return Scorer(stats, _mean, {"use_stemmer": True},
                  lambda use_stemmer=True: {"use_stemmer": bool(use_stemmer)})


# --- SQuAD F1 and exact match ------------------------------------------------------------------
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


def _squad_stats(preds, refs) -> np.ndarray:
    return 100 * np.asarray([squad_example_f1(a, b) for a, b in zip(preds, refs, strict=True)],
                            dtype=np.float64).reshape(len(preds), 1)


def _exact_match_stats(preds, refs) -> np.ndarray:
    return 100 * np.asarray([normalize_answer(a) == normalize_answer(b)
                             for a, b in zip(preds, refs, strict=True)],
                            dtype=np.float64).reshape(len(preds), 1)


# --- macro F1 (classification) -----------------------------------------------------------------
def per_label_f1(predictions: Sequence[Hashable],
                 references: Sequence[Hashable]) -> dict[Hashable, float]:
    """F1 (x100) per label seen in references or predictions, by label.

    Per label F1 = 2tp / (2tp + fp + fn), 0 where a label has no tp, fp or fn to speak of:
    scikit-learn's ``f1_score(average=None, zero_division=0)``, without the dependency.
    """
    pairs = list(zip(predictions, references, strict=True))
    out = {}
    for label in sorted(set(references) | set(predictions)):
        tp = sum(p == label == r for p, r in pairs)
        fp = sum(p == label != r for p, r in pairs)
        fn = sum(r == label != p for p, r in pairs)
        out[label] = 100 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return out


def _macro_stats(preds, refs) -> np.ndarray:
    labels = {x: i for i, x in enumerate(sorted(set(refs) | set(preds)))}
    return np.asarray([(labels[p], labels[r]) for p, r in zip(preds, refs, strict=True)],
                      dtype=np.int64).reshape(len(preds), 2)


def _macro_value(rows: np.ndarray) -> float:
    # the mean over the labels seen in the (resampled) rows
    per_label = per_label_f1(rows[:, 0].tolist(), rows[:, 1].tolist())
    return sum(per_label.values()) / len(per_label) if per_label else 0.0


# --- multiple choice: rows from per-example records -------------------------------------------
# A record is what a multiple-choice task saves per example (``tasks/multiple_choice.py``):
# ``loglikelihoods`` (summed, one per choice), ``choice_chars`` (each choice's length in
# characters) and ``reference`` (the correct choice's index). Scores are percentages, as every
# other slimbench score; lm-eval reports the same accuracies as fractions.
def choice_prediction(record: dict, normalized: bool = False) -> int:
    """The chosen index: the highest summed log-likelihood, or per character with
    ``normalized`` (lm-eval's ``acc_norm``); ties go to the first choice (``np.argmax``)."""
    ll = np.asarray(record["loglikelihoods"], dtype=np.float64)
    if normalized:
        ll = ll / np.asarray(record["choice_chars"], dtype=np.float64)
    return int(np.argmax(ll))


def _choice_hits(normalized: bool) -> Callable[..., np.ndarray]:
    def stats(records) -> np.ndarray:
        return 100 * np.asarray([choice_prediction(r, normalized) == r["reference"]
                                 for r in records], dtype=np.float64).reshape(len(records), 1)
    return stats


def _choice_labels(records) -> np.ndarray:
    return np.asarray([(choice_prediction(r), r["reference"]) for r in records],
                      dtype=np.int64).reshape(len(records), 2)


def chance_accuracy(records) -> float:
    """Expected accuracy of a uniform guess, in percent: the mean of 1 / choices."""
    return 100 * float(np.mean([1 / len(r["loglikelihoods"]) for r in records]))


# --- perplexity: rows are per text (NLL nats, scored tokens, utf-8 bytes) ----------------------
def _perplexity(rows: np.ndarray) -> float:
    return math.exp(rows[:, 0].sum() / rows[:, 1].sum())


def _bits_per_byte(rows: np.ndarray) -> float:
    return float(rows[:, 0].sum() / math.log(2) / rows[:, 2].sum())


# generation metrics: stats take (predictions, references, **options)
METRICS: Registry[Scorer] = Registry("metric")
METRICS.add("f1", Scorer(_subtoken_stats, _subtoken_f1),
            "subtoken F1 of identifiers (code2seq), micro-averaged")
METRICS.add("squad_f1", Scorer(_squad_stats, _mean), "SQuAD word-overlap F1, mean over examples")
METRICS.add("exact_match", Scorer(_exact_match_stats, _mean),
            "exact match after SQuAD normalisation")
METRICS.add("macro_f1", Scorer(_macro_stats, _macro_value, per_example=False),
            "classification F1 averaged over labels")
METRICS.add("bleu", Scorer(_bleu_stats, _bleu_value, {"tokenize": "13a", "lowercase": False},
                           _bleu_info), "corpus BLEU (sacrebleu)")
for _key in ("rouge1", "rouge2", "rougeL"):
    METRICS.add(_key, _rouge(_key), f"{_key} F-measure (rouge-score), mean over examples")

# multiple-choice metrics take the per-example records as their stats' only argument
CHOICE_METRICS: Registry[Scorer] = Registry("multiple-choice metric")
CHOICE_METRICS.add("acc", Scorer(_choice_hits(False), _mean),
                   "accuracy: the choice of highest summed log-likelihood")
CHOICE_METRICS.add("acc_norm", Scorer(_choice_hits(True), _mean),
                   "accuracy on log-likelihood per character (lm-eval's acc_norm)")
CHOICE_METRICS.add("macro_f1", Scorer(_choice_labels, _macro_value, per_example=False),
                   "F1 over choice indices, averaged over labels")

# perplexity metrics take the per-text rows of ``perplexity.per_text_nll`` as their stats
PERPLEXITY_METRICS: Registry[Scorer] = Registry("perplexity metric")
PERPLEXITY_METRICS.add("perplexity", Scorer(lambda rows: rows, _perplexity),
                       "exp(NLL per token) over the corpus")
PERPLEXITY_METRICS.add("bits_per_byte", Scorer(lambda rows: rows, _bits_per_byte),
                       "NLL in bits per utf-8 byte (tokenizer-independent)")

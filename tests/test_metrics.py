"""The metrics of ``tasks/scorers.py`` (their one definition) against hand-worked values."""

import math

import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from slimbench.tasks import scorers
from slimbench.tasks.scorers import METRICS, compute


def test_subtokens():
    assert scorers.subtokens("getHTTPResponse_code2") == ["get", "http", "response", "code", "2"]
    assert scorers.subtokens("_read_string") == ["read", "string"]
    assert scorers.subtokens("") == []


def test_subtoken_f1_hand_case():
    preds, refs = ["get_value", "set_name", "close"], ["get_values", "set_name", ""]
    # tp: get, set, name = 3; fp: value, close = 2; fn: values = 1
    assert METRICS["f1"].stats(preds, refs).sum(0).tolist() == [3, 2, 1]
    p, rc = 3 / 5, 3 / 4
    assert compute("f1", preds, refs) == pytest.approx(100 * 2 * p * rc / (p + rc))
    assert compute("f1", ["a"], ["b"]) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        compute("f1", ["a", "b"], ["a"])


def test_bleu_hand_case():
    value = compute("bleu", ["the cat sat on the mat"], ["the cat sat on a mat"])
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    expected = 100 * math.exp(sum(map(math.log, [5 / 6, 3 / 5, 2 / 4, 1 / 3])) / 4)
    assert value == pytest.approx(expected, abs=1e-9)
    signature = METRICS["bleu"].info()["signature"]
    assert signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert compute("bleu", ["a b c d e"], ["a b c d e"]) == pytest.approx(100)


def test_rouge_hand_case():
    preds, refs = ["the cat sat"], ["the cat sat on the mat"]
    assert compute("rouge1", preds, refs) == pytest.approx(100 * 2 * 1 * 0.5 / 1.5)
    assert compute("rouge2", preds, refs) == pytest.approx(100 * 2 * 1 * 0.4 / 1.4)
    assert compute("rougeL", preds, refs) == pytest.approx(compute("rouge1", preds, refs))
    # averaged over examples, not pooled
    assert compute("rouge1", ["x y", "a b"], ["x y", "c d"]) == pytest.approx(50.0)


def test_squad_normalisation_and_f1_hand_case():
    assert scorers.normalize_answer("The  Cat's hat!") == "cats hat"
    assert scorers.normalize_answer("an apple, a pear") == "apple pear"
    # pred words {big, red, dog}, ref words {red, dog, barked}: 2 common -> p=2/3, r=2/3
    assert scorers.squad_example_f1("the Big red dog.", "Red dog barked") == pytest.approx(2 / 3)
    assert scorers.squad_example_f1("a", "the") == 1.0  # both normalise to empty
    assert scorers.squad_example_f1("", "cat") == 0.0
    # repeated words are clipped: pred "cat cat", ref "cat" -> p=1/2, r=1 -> f1=2/3
    assert scorers.squad_example_f1("cat cat", "cat") == pytest.approx(2 / 3)
    preds, refs = ["The cat.", "dog", "red fox"], ["cat", "a dog!", "blue fox"]
    assert compute("exact_match", preds, refs) == pytest.approx(100 * 2 / 3)
    assert compute("squad_f1", preds, refs) == pytest.approx(100 * (1 + 1 + 0.5) / 3)


def test_macro_f1_hand_case():
    preds = ["pos", "pos", "neg", "neu", "neg"]
    refs = ["pos", "neg", "neg", "pos", "neg"]
    # pos: tp1 fp1 fn1 -> 2/4; neg: tp2 fp0 fn1 -> 4/5; neu: tp0 fp1 fn0 -> 0
    assert scorers.per_label_f1(preds, refs) == pytest.approx(
        {"pos": 50.0, "neg": 80.0, "neu": 0.0})
    assert compute("macro_f1", preds, refs) == pytest.approx((50 + 80 + 0) / 3)
    assert compute("macro_f1", ["a", "b"], ["a", "b"]) == 100.0
    assert not METRICS["macro_f1"].per_example  # one row alone is no macro average


def test_scorers_agree_with_the_libraries():
    preds = ["the cat sat on the mat", "a quick brown fox", "hello", "Read the file."]
    refs = ["the cat sat on a mat", "the quick brown fox jumps", "hello world", "Read a file."]
    bleu = METRICS["bleu"]
    rows = bleu.stats(preds, refs)
    assert rows.shape == (4, 10)
    # re-aggregating sacrebleu's per-sentence counts is exactly its corpus BLEU
    library = BLEU(tokenize="13a")
    assert bleu.aggregate(rows) == pytest.approx(library.corpus_score(preds, [refs]).score,
                                                 abs=1e-12)
    assert bleu.info()["signature"] == str(library.get_signature())
    lib_rouge = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(lib_rouge.score(r, p)[key].fmeasure
                             for p, r in zip(preds, refs, strict=True)) / len(preds)
        assert compute(key, preds, refs, use_stemmer=False) == pytest.approx(expected)


def test_subtoken_f1_is_micro_averaged_over_rows():
    preds, refs = ["getValue", "x"], ["getValue", "yz"]
    f1 = METRICS["f1"]
    rows = f1.stats(preds, refs)
    # pooled counts: tp 2, fp 1, fn 1 -> F1 2/3, not the mean of per-example F1s (1 and 0)
    assert f1.aggregate(rows) == pytest.approx(100 * 2 / 3)
    assert [f1.aggregate(rows[i: i + 1]) for i in range(2)] == [100.0, 0.0]


def test_rouge_stemming_is_configurable():
    s = METRICS["rouge1"]
    # Porter stemming maps "running cats" and "runs cat" to "run cat"
    assert s.aggregate(s.stats(["running cats"], ["runs cat"], use_stemmer=True)) == 100.0
    assert s.aggregate(s.stats(["running cats"], ["runs cat"], use_stemmer=False)) == 0.0


def test_perplexity_is_aggregated_in_one_place():
    import numpy as np

    from slimbench.tasks.perplexity import PerplexityConfig, perplexity_scores

    rows = np.array([[2.0, 2, 10], [4.0, 2, 30]])  # nll nats, tokens, bytes per text
    scores = perplexity_scores(rows, 3, PerplexityConfig())
    assert scores.perplexity == pytest.approx(math.exp(6 / 4))
    assert scores.bits_per_byte == pytest.approx(6 / math.log(2) / 40)
    assert set(scorers.PERPLEXITY_METRICS) == set(scores.metrics)
    assert (scores.nll_nats, scores.tokens, scores.bytes, scores.windows) == (6.0, 4, 40, 3)
    # what a perplexity task records as its scores: metrics first, then the totals
    assert list(scores.to_dict()) == [*scores.metrics, "nll_nats", "tokens", "bytes",
                                      "windows", "protocol"]

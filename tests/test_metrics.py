import math

import pytest

from slimbench.tasks import metrics


def test_subtokens():
    assert metrics.subtokens("getHTTPResponse_code2") == ["get", "http", "response", "code", "2"]
    assert metrics.subtokens("_read_string") == ["read", "string"]
    assert metrics.subtokens("") == []


def test_subtoken_f1_hand_case():
    r = metrics.subtoken_f1(["get_value", "set_name", "close"], ["get_values", "set_name", ""])
    # tp: get, set, name = 3; fp: value, close = 2; fn: values = 1
    assert r["precision"] == pytest.approx(100 * 3 / 5)
    assert r["recall"] == pytest.approx(100 * 3 / 4)
    p, rc = 3 / 5, 3 / 4
    assert r["f1"] == pytest.approx(100 * 2 * p * rc / (p + rc))
    assert metrics.subtoken_f1(["a"], ["b"])["f1"] == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        metrics.subtoken_f1(["a", "b"], ["a"])


def test_bleu_hand_case():
    r = metrics.corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    expected = 100 * math.exp(sum(map(math.log, [5 / 6, 3 / 5, 2 / 4, 1 / 3])) / 4)
    assert r["bleu"] == pytest.approx(expected, abs=1e-9)
    assert r["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert metrics.corpus_bleu(["a b c d e"], ["a b c d e"])["bleu"] == pytest.approx(100)


def test_rouge_hand_case():
    r = metrics.rouge(["the cat sat"], ["the cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(100 * 2 * 1 * 0.5 / 1.5)
    assert r["rouge2"] == pytest.approx(100 * 2 * 1 * 0.4 / 1.4)
    assert r["rougeL"] == pytest.approx(r["rouge1"])
    # averaged over examples, not pooled
    two = metrics.rouge(["x y", "a b"], ["x y", "c d"])
    assert two["rouge1"] == pytest.approx(50.0)


def test_squad_normalisation_and_f1_hand_case():
    assert metrics.normalize_answer("The  Cat's hat!") == "cats hat"
    assert metrics.normalize_answer("an apple, a pear") == "apple pear"
    # pred words {big, red, dog}, ref words {red, dog, barked}: 2 common -> p=2/3, r=2/3
    assert metrics.squad_example_f1("the Big red dog.", "Red dog barked") == pytest.approx(2 / 3)
    assert metrics.squad_example_f1("a", "the") == 1.0  # both normalise to empty
    assert metrics.squad_example_f1("", "cat") == 0.0
    # repeated words are clipped: pred "cat cat", ref "cat" -> p=1/2, r=1 -> f1=2/3
    assert metrics.squad_example_f1("cat cat", "cat") == pytest.approx(2 / 3)
    r = metrics.squad_f1(["The cat.", "dog", "red fox"], ["cat", "a dog!", "blue fox"])
    assert r["exact_match"] == pytest.approx(100 * 2 / 3)
    assert r["squad_f1"] == pytest.approx(100 * (1 + 1 + 0.5) / 3)


def test_macro_f1_hand_case():
    preds = ["pos", "pos", "neg", "neu", "neg"]
    refs = ["pos", "neg", "neg", "pos", "neg"]
    r = metrics.macro_f1(preds, refs)
    # pos: tp1 fp1 fn1 -> 2/4; neg: tp2 fp0 fn1 -> 4/5; neu: tp0 fp1 fn0 -> 0
    assert r["per_label"] == pytest.approx({"pos": 50.0, "neg": 80.0, "neu": 0.0})
    assert r["macro_f1"] == pytest.approx((50 + 80 + 0) / 3)
    assert metrics.macro_f1(["a", "b"], ["a", "b"])["macro_f1"] == 100.0


def test_scorers_agree_with_library_functions():
    from slimbench.tasks.scorers import METRICS

    preds = ["the cat sat on the mat", "a quick brown fox", "hello", "Read the file."]
    refs = ["the cat sat on a mat", "the quick brown fox jumps", "hello world", "Read a file."]
    bleu = METRICS["bleu"]
    rows = bleu.stats(preds, refs)
    assert rows.shape == (4, 10)
    # re-aggregating sacrebleu's per-sentence counts is exactly its corpus BLEU
    assert bleu.aggregate(rows) == pytest.approx(metrics.corpus_bleu(preds, refs)["bleu"],
                                                 abs=1e-12)
    assert bleu.info()["signature"] == metrics.corpus_bleu(preds, refs)["signature"]
    f1 = METRICS["f1"]
    assert f1.aggregate(f1.stats(preds, refs)) == pytest.approx(
        metrics.subtoken_f1(preds, refs)["f1"])
    for key in ("rouge1", "rouge2", "rougeL"):
        s = METRICS[key]
        assert s.aggregate(s.stats(preds, refs, use_stemmer=False)) == pytest.approx(
            metrics.rouge(preds, refs, use_stemmer=False)[key])


def test_rouge_stemming_is_configurable():
    from slimbench.tasks.scorers import METRICS

    s = METRICS["rouge1"]
    # Porter stemming maps "running cats" and "runs cat" to "run cat"
    assert s.aggregate(s.stats(["running cats"], ["runs cat"], use_stemmer=True)) == 100.0
    assert s.aggregate(s.stats(["running cats"], ["runs cat"], use_stemmer=False)) == 0.0

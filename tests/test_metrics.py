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

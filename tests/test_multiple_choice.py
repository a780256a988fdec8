"""Multiple-choice tasks: lm-eval's scoring convention, exact metrics on hand-made cases, the
embedded held-out set (deterministic, above chance on the reference) and clear errors."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.loader import load_artifact
from slimbench.errors import UsageError
from slimbench.tasks.generation import run_task
from slimbench.tasks.loglikelihood import encode_pair, score_continuations
from slimbench.tasks.paired import metric_rows, paired_test
from slimbench.tasks.scorers import CHOICE_METRICS, chance_accuracy, per_label_f1
from slimbench.tasks.specs import TASKS, load_task_file

ROOT = Path(__file__).resolve().parents[1]

MC_TASK = """
name: tiny_mc
version: 1
kind: multiple_choice
dataset: {path: rows.jsonl}
prompt: "{question}"
choices: "{options}"
target: "{answer}"
multiple_choice: {batch_size: 2}
metric_list:
  - {metric: acc, higher_is_better: true}
  - {metric: acc_norm, higher_is_better: true}
  - {metric: macro_f1, higher_is_better: true}
"""
ROWS = [{"question": "def add(a, b):\n    return a", "options": ["+ b", "- b", "* b"],
         "answer": 0},
        {"question": "import os\nos.path.", "options": ["join(a, b)", "zzz(q)"],
         "answer": "join(a, b)"},  # the text of a choice, not its index
        {"question": "for i in", "options": ["range(10):", "banana:", "7 7 7"], "answer": 0},
        {"question": "class Foo", "options": ["(object):", "[[[", "))"], "answer": 2}]


@pytest.fixture(scope="module")
def tiny_rt(tmp_path_factory, tiny_model, ref_tokenizer):
    d = tmp_path_factory.mktemp("tiny-mc")
    tiny_model.save_pretrained(d)
    ref_tokenizer.save_pretrained(d)
    loaded = load_artifact(str(d))
    return TorchRuntime(loaded), loaded.tokenizer


def _task(tmp_path, body=MC_TASK, rows=ROWS):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "task.yaml"
    path.write_text(body)
    return path


def test_encode_pair_follows_lm_eval(ref_tokenizer):
    tok = ref_tokenizer
    # the context's trailing whitespace moves into the continuation; the seam is running text
    ctx, cont = encode_pair(tok, "x = foo(", "1)")
    assert ctx == tok.encode("x = foo(") and ctx + cont == tok.encode("x = foo(1)")
    ctx, cont = encode_pair(tok, "def f():\n    ", "return 1")
    assert ctx == tok.encode("def f():") and ctx + cont == tok.encode("def f():\n    return 1")
    assert tok.decode(cont) == "\n    return 1"
    # an empty context is the prefix token (BOS; this tokenizer's BOS is its EOS, id 0)
    assert encode_pair(tok, "", "import os") == ([0], tok.encode("import os"))


def test_scores_equal_the_runtimes_own_token_logprobs(tiny_rt):
    rt, tok = tiny_rt
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(1, 4096, n).tolist(), rng.integers(1, 4096, m).tolist())
             for n, m in ((5, 3), (1, 1), (20, 7), (9, 2))]
    pairs.append((rng.integers(1, 4096, 70).tolist(), rng.integers(1, 4096, 4).tolist()))
    got = score_continuations(rt, pairs, batch_size=2)
    one = score_continuations(rt, pairs, batch_size=1)  # other batches, other padding
    assert np.allclose([g[0] for g in got], [o[0] for o in one], rtol=0, atol=1e-5)
    assert [g[1] for g in got] == [o[1] for o in one]
    for (ctx, cont), (logprob, greedy) in zip(pairs, got, strict=True):
        seq = (ctx + cont)[-(rt.max_length + 1):]  # 74 tokens > 64 positions: left-truncated
        # the runtime's own float64 log-softmax of every position; row t predicts seq[t + 1]
        dist = rt.next_token_logprobs([seq[:-1]])[0][-len(cont):]  # (len(cont), V)
        assert logprob == pytest.approx(dist[np.arange(len(cont)), cont].sum(), abs=1e-5)
        assert greedy == bool((dist.argmax(-1) == np.array(cont)).all())
    # a continuation that is the model's own greedy choice is flagged greedy
    ctx = [5, 6, 7]
    nxt = int(rt.next_token_logprobs([ctx])[0][-1].argmax())
    assert score_continuations(rt, [(ctx, [nxt])])[0][1] is True
    with pytest.raises(UsageError, match="does not fit the model's 64 positions"):
        score_continuations(rt, [([1], list(range(65)))])
    with pytest.raises(UsageError, match="needs a non-empty context and continuation"):
        score_continuations(rt, [([], [1])])


def _record(lls, chars, ref):
    return {"loglikelihoods": lls, "choice_chars": chars, "reference": ref}


def test_metrics_on_hand_made_records():
    records = [_record([-1.0, -2.0, -3.0], [1, 1, 1], 0),     # right; per char also right
               _record([-4.0, -6.0], [2, 6], 1),              # wrong; per char -2 vs -1: right
               _record([-5.0, -5.0, -9.0, -9.0], [5, 5, 5, 5], 1),  # tie -> first: wrong
               _record([-3.0, -1.0], [1, 1], 1)]              # right
    acc = CHOICE_METRICS["acc"]
    assert acc.aggregate(acc.stats(records)) == 50.0
    assert acc.stats(records)[:, 0].tolist() == [100.0, 0.0, 0.0, 100.0]
    norm = CHOICE_METRICS["acc_norm"]
    assert norm.aggregate(norm.stats(records)) == 75.0
    # macro-F1 over choice indices: predictions (0, 0, 0, 1), references (0, 1, 1, 1)
    # label 0: tp 1, fp 2, fn 0 -> F1 2/4; label 1: tp 1, fp 0, fn 2 -> F1 2/4
    f1 = CHOICE_METRICS["macro_f1"]
    assert f1.aggregate(f1.stats(records)) == pytest.approx(50.0)
    assert per_label_f1([0, 0, 0, 1], [0, 1, 1, 1]) == {0: 50.0, 1: 50.0}
    assert chance_accuracy(records) == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 4 + 1 / 2) / 4)


def test_local_task_runs_and_saves_what_its_metrics_need(tmp_path, tiny_rt):
    rt, tok = tiny_rt
    res = run_task(rt, tok, str(_task(tmp_path)), resamples=200)
    score = res.score
    assert score.n == 4 and score.metric == "acc" and score.higher_is_better is True
    ex = res.examples
    assert [e.reference for e in ex] == [0, 0, 0, 2]
    assert [len(e.loglikelihoods) for e in ex] == [3, 2, 3, 3]
    assert ex[0].choice_chars == [3, 3, 3]
    # each prediction is the argmax of its own saved log-likelihoods, each score its own
    for e in ex:
        assert e.prediction == int(np.argmax(e.loglikelihoods))
        assert e.scores["acc"] == 100.0 * (e.prediction == e.reference)
    assert score.value == np.mean([e.scores["acc"] for e in ex])
    chance = 100 * (1 / 3 + 1 / 2 + 1 / 3 + 1 / 3) / 4
    assert score.metrics["acc"].info["chance"] == pytest.approx(chance)
    assert score.scores["chance"] == pytest.approx(chance)
    # the scores are the task's choices, scored as a direct call scores them
    direct = score_continuations(rt, [encode_pair(tok, ROWS[3]["question"], " " + c)
                                      for c in ROWS[3]["options"]])
    assert ex[3].loglikelihoods == pytest.approx([d[0] for d in direct], abs=1e-5)
    # the gate's paired test rebuilds every metric from the saved records (examples file lines)
    records = res.records()
    assert [r["task"] for r in records] == ["tiny_mc"] * 4
    assert list(records[0]) == ["task", "id", "reference", "choice_chars", "prediction",
                                "loglikelihoods", "greedy", "scores"]
    for metric in ("acc", "acc_norm", "macro_f1"):
        rows, aggregate = metric_rows(records, "multiple_choice", metric)
        assert aggregate(rows) == score.metrics[metric].value


def test_paired_test_on_multiple_choice_records():
    rng = np.random.default_rng(1)
    base = [dict(_record(rng.normal(size=4).tolist(), [5, 5, 5, 5], int(rng.integers(4))),
                 id=i) for i in range(200)]
    for b in base[:120]:  # the baseline is right on 120 of 200
        b["loglikelihoods"][b["reference"]] = 10.0
    same = paired_test(base, base, "multiple_choice", "acc", None, True, "significance",
                       "absolute", 2.0)
    assert same.status == "pass" and same.delta == 0
    # the candidate loses 40 of them: 20 points, far beyond a 2-point allowance
    worse = [dict(b, loglikelihoods=[-9.0 if k == b["reference"] else 0.0 for k in range(4)])
             if i < 40 else b for i, b in enumerate(base)]
    res = paired_test(base, worse, "multiple_choice", "acc", None, True, "significance",
                      "absolute", 2.0)
    assert res.status == "fail" and res.delta == pytest.approx(-20.0)


@pytest.mark.parametrize("change,msg", [
    (("choices: \"{options}\"", "choices: \"{options} {x}\""),
     "choices must name one row field"),
    (("choices: \"{options}\"", "choices: [\"{a}\"]"), "a list of at least two templates"),
    (("{batch_size: 2}", "{batch: 2}"), "multiple_choice: unknown field(s) batch"),
    (("{batch_size: 2}", "{batch_size: 0}"), "multiple_choice.batch_size must be an integer"),
    (("metric: macro_f1", "metric: bleu"), "unknown metric 'bleu' for a multiple_choice task"),
])
def test_bad_task_yaml_one_clear_error(tmp_path, change, msg):
    path = _task(tmp_path, MC_TASK.replace(*change))
    with pytest.raises(UsageError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_task_file(path)


@pytest.mark.parametrize("row,msg", [
    ({"answer": 3}, "row 0 target index 3 is not one of its 3 choices"),
    ({"answer": "/ b"}, "row 0 target '/ b' is neither an index nor one of its choices"),
    ({"options": ["+ b"]}, "row 0 field 'options' must be a list of at least two texts"),
    ({"options": ["+ b", ""]}, "row 0 has an empty choice"),
])
def test_bad_rows_one_clear_error(tmp_path, tiny_rt, row, msg):
    rt, tok = tiny_rt
    path = _task(tmp_path, rows=[ROWS[0] | row])
    with pytest.raises(UsageError, match=msg.replace("(", r"\(")):
        run_task(rt, tok, str(path))


def test_report_shows_multiple_choice_against_chance(tmp_path, tiny_dir):
    from slimbench.bench.measure.cell import suite_cell
    from slimbench.reports.html import render_html

    latency = {"prefill": [8], "decode_contexts": [8], "new_tokens": 2, "generate_prompt": 0,
               "repeats": 1, "min_seconds": 0}
    out = suite_cell(str(tiny_dir), "cpu", 1, latency, ["next_line"], 8, True)
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "tiny--cpu.json").write_text(json.dumps(out.result.to_dict()))
    acc = out.result.quality["next_line"].metrics["acc"]
    html = render_html(tmp_path, "mc", None).read_text()
    table = html[html.index('<table id="choices">'):]
    table = table[: table.index("</table>")]
    lo, hi = acc.ci95
    assert "<td>next_line</td>" in table and "<td>8</td>" in table
    assert f"{acc.value:.4g} [{lo:.4g}, {hi:.4g}]" in table and "<td>25</td>" in table
    # a random-weight model's interval reaches down to chance: not above it
    assert lo <= 25 and '<td class="worse">no</td>' in table


def _builder():
    spec = importlib.util.spec_from_file_location("build_mc_set",
                                                  ROOT / "scripts" / "build_mc_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embedded_set_is_rebuilt_byte_for_byte_from_validation_files():
    from slimbench.tasks.corpus import load_corpus
    from slimbench.tasks.evalsets import EVALSET_DIR, load_evalset, manifest

    builder = _builder()
    blob = builder.to_jsonl(builder.build(load_corpus("validation")))
    assert hashlib.sha256(blob).hexdigest() == manifest()["next_line"].sha256
    assert blob == (EVALSET_DIR / "next_line.jsonl").read_bytes()
    rows = load_evalset("next_line")
    val = {r.path: r.text for r in load_corpus("validation")}
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        # the true line really follows the prompt in its held-out file
        line = r["choices"][r["label"]]
        assert r["prompt"] + r["sep"] + line in val[r["path"]], r["id"]
    assert len({r["label"] for r in rows}) == 4  # the answer's position varies


@pytest.mark.slow
def test_reference_is_clearly_above_chance_on_next_line():
    loaded = load_artifact("reference")
    res = run_task(TorchRuntime(loaded), loaded.tokenizer, "next_line", limit=200)
    acc = res.score.metrics["acc"]
    assert acc.info["chance"] == 25.0
    assert acc.ci95[0] > acc.info["chance"], acc  # the 95% interval's low end beats a guess
    assert TASKS.get("next_line").kind == "multiple_choice"

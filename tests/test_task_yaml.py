import json
import sys
import types

import pytest

from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.loader import load_artifact
from slimbench.errors import UsageError
from slimbench.tasks.generation import run_task
from slimbench.tasks.sources import load_examples
from slimbench.tasks.specs import DEFS_DIR, TASKS, load_task_file, parse_task

QA_ROWS = [{"q": "capital of France", "ctx": "Paris is the capital.", "answer": "Paris"},
           {"q": "two plus two", "ctx": "Two plus two is four.", "answer": "four"},
           {"q": "color of the sky", "ctx": "The sky is blue.", "answer": "the blue sky"}]


def _yaml(tmp_path, body: str, name="task.yaml"):
    path = tmp_path / name
    path.write_text(body)
    return path


QA_TASK = """
name: tiny_qa
version: 2
description: answer from context
dataset: {path: qa.jsonl}
prompt: "Context: {ctx}\\nQuestion: {q}\\nAnswer:"
target: "{answer}"
generation: {max_new_tokens: 4, stop: ["\\n"], postprocess: strip, batch_size: 2}
metric_list:
  - {metric: squad_f1, higher_is_better: true}
  - {metric: exact_match, higher_is_better: true}
"""


def test_builtin_tasks_come_from_yaml():
    assert TASKS.names() == ["docstring_body", "docstring_summary", "method_name", "next_line",
                             "perplexity"]
    assert sorted(p.stem for p in DEFS_DIR.glob("*.yaml")) == TASKS.names()
    mn = TASKS.get("method_name")
    assert (mn.metric, mn.higher_is_better, mn.evalset) == ("f1", True, "method_name")
    assert mn.generation.max_new_tokens == 12 and mn.generation.stop == ("(",)
    body = TASKS.get("docstring_body")
    assert [m.metric for m in body.metric_list] == ["rougeL", "rouge1", "rouge2"]
    assert dict(body.metric_list[0].options) == {"use_stemmer": True}
    ppl = TASKS.get("perplexity")
    assert (ppl.perplexity.context_length, ppl.perplexity.stride) == (256, 128)
    assert ppl.higher_is_better is False


def test_local_jsonl_task_runs(tmp_path, tiny_dir):
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QA_ROWS))
    spec = load_task_file(_yaml(tmp_path, QA_TASK))
    assert spec.version == "2" and spec.dataset.path == str(tmp_path / "qa.jsonl")
    rows = load_examples(spec)
    assert [r["id"] for r in rows] == [0, 1, 2]  # ids added where rows have none
    loaded = load_artifact(str(tiny_dir))
    res = run_task(TorchRuntime(loaded), loaded.tokenizer, str(tmp_path / "task.yaml"),
                   resamples=50)
    score = res.score
    assert score.task == "tiny_qa" and score.n == 3 and score.version == "2"
    assert [e.reference for e in res.examples] == ["Paris", "four", "the blue sky"]
    # the headline and each example's score follow from the predictions, whatever they are
    per = [e.scores["squad_f1"] for e in res.examples]
    assert score.value == pytest.approx(sum(per) / 3)
    assert set(score.metrics) == {"squad_f1", "exact_match"}
    assert score.metrics["exact_match"].resamples == 50
    # the task's own limit applies unless a limit is given
    limited = parse_task({**_raw(QA_TASK), "limit": 2}, "x", tmp_path)
    assert len(load_examples(limited)) == 2 and len(load_examples(limited, 1)) == 1


def _raw(text):
    import yaml

    return yaml.safe_load(text)


@pytest.mark.parametrize("change,msg", [
    ({"temperature": 0.7}, "unknown field(s) temperature"),
    ({"metric_list": [{"metric": "bleurt", "higher_is_better": True}]},
     "unknown metric 'bleurt'"),
    ({"metric_list": [{"metric": "bleu"}]}, "needs higher_is_better"),
    ({"metric_list": [{"metric": "bleu", "higher_is_better": True, "use_stemmer": True}]},
     "metric bleu: unknown field(s) use_stemmer"),
    ({"dataset": None}, "missing dataset"),
    ({"dataset": {"path": "a.jsonl", "evalset": "method_name"}}, "exactly one of"),
    ({"generation": {"max_new_tokens": 0}}, "max_new_tokens must be positive, got 0"),
    ({"generation": {"max_new_tokens": 4, "greedy": False}}, "only greedy"),
    ({"generation": {"max_new_tokens": 4, "top_k": 5}}, "unknown field(s) top_k"),
    ({"kind": "perplexity"}, "unknown metric 'squad_f1' for a perplexity task"),
    ({"prompt": "{q"}, "bad template"),
    ({"limit": 0}, "limit must be an integer >= 1"),
])
def test_bad_task_yaml_one_clear_error(tmp_path, change, msg):
    raw = _raw(QA_TASK) | change
    with pytest.raises(UsageError) as e:
        parse_task(raw, "bad.yaml", tmp_path)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_bad_files_and_rows(tmp_path):
    with pytest.raises(UsageError, match="not valid YAML at line 2"):
        load_task_file(_yaml(tmp_path, "name: x\n  bad: [\n"))
    with pytest.raises(UsageError, match="does not exist"):
        load_task_file(tmp_path / "nope.yaml")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"q": "x", "answer": "y"}) + "\n")
    spec = load_task_file(_yaml(tmp_path, QA_TASK))
    with pytest.raises(UsageError, match=r"rows have no field\(s\) ctx"):
        load_examples(spec)
    (tmp_path / "qa.jsonl").write_text("{not json\n")
    with pytest.raises(UsageError, match="line 1 is not JSON"):
        load_examples(spec)


def test_huggingface_dataset(tmp_path, monkeypatch):
    raw = _raw(QA_TASK) | {"dataset": {"hf": str(tmp_path), "config": "plain",
                                       "split": "validation"}}
    spec = parse_task(raw, "hf.yaml", tmp_path)
    assert spec.dataset.describe() == f"hf:{tmp_path}/plain:validation"
    try:
        import datasets  # noqa: F401
    except ImportError:  # not a dependency: the message says what to install
        monkeypatch.setitem(sys.modules, "datasets", None)
        with pytest.raises(UsageError, match="needs the `datasets` package"):
            load_examples(spec)
    # the call made when it is installed (a stand-in module records it)
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return QA_ROWS

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    rows = load_examples(spec, limit=2)
    assert calls == [(str(tmp_path), "plain", "validation")]
    assert [r["answer"] for r in rows] == ["Paris", "four"]

"""A search's budget on tasks of the user's own: a task YAML file and an lm-eval task, declared
under the budget's ``tasks:``, screened on their *tune* documents and confirmed on their *test*
documents (split by id as the embedded sets are), and carried into ``best-suite.yaml``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slimbench.bench.cli import main
from slimbench.bench.orchestrate.search_budget import parse_budget
from slimbench.bench.orchestrate.suite import parse_suite
from slimbench.errors import UsageError
from slimbench.schema import load_file
from slimbench.tasks.evalsets import load_evalset
from slimbench.tasks.splits import split_of
from tests.lmeval_tasks import MC_YAML

MY_TASK = (Path(__file__).parents[1] / "tasks" / "defs" / "next_line.yaml").read_text().replace(
    "name: next_line", "name: my_lines")

@pytest.fixture
def my_task(tmp_path):
    path = tmp_path / "my_lines.yaml"
    path.write_text(MY_TASK)
    return path


def test_a_declared_task_file_is_a_budget_task(my_task):
    budget = parse_budget({"tasks": [str(my_task)], "my_lines.acc": {"non_inferior": 0.05},
                           "perplexity.perplexity": {"non_inferior": 0.02}}, "b.yaml")
    assert budget.tasks == ("my_lines", "perplexity")
    assert budget.task_spec("my_lines").name == "my_lines"
    assert budget.task_spec("my_lines").source == str(my_task)
    # a suite lists the registered task by name and the file as written
    assert budget.suite_tasks == ["perplexity", str(my_task)]
    assert budget.to_dict()["declared"] == [str(my_task)]


@pytest.mark.parametrize("data, want", [
    ({"my_lines.acc": {"non_inferior": 0.05}},
     "unknown task 'my_lines'.*list its file, or its lm_eval entry, under the budget's tasks:"),
    ({"tasks": "x.yaml", "perplexity.perplexity": {"non_inferior": 0.02}},
     "tasks must be a list of task files"),
    ({"tasks": ["{task}"], "perplexity.perplexity": {"non_inferior": 0.02}},
     "tasks my_lines are declared but no criterion names them"),
    ({"tasks": ["{task}", "{task}"], "my_lines.acc": {"non_inferior": 0.02}},
     "are both named 'my_lines'"),
    ({"tasks": ["{task}"], "my_lines.bleu": {"non_inferior": 0.02}},
     "task my_lines has no metric 'bleu'"),
    ({"tasks": [{"lm_eval": {"tasks": []}}], "x.acc": {"non_inferior": 0.02}},
     "lm_eval needs task names"),
])
def test_bad_declared_tasks_are_one_line(my_task, data, want):
    raw = json.loads(json.dumps(data).replace("{task}", str(my_task)))
    with pytest.raises(UsageError, match=want):
        parse_budget(raw, "b.yaml")


@pytest.fixture(scope="module")
def lmeval_dir(tmp_path_factory):
    """An lm-eval multiple-choice task on 60 rows of next_line (about 30 tune, 30 test)."""
    pytest.importorskip("lm_eval", reason="lm-eval tasks need the lmeval extra "
                                          "(`make test` installs it)")
    d = tmp_path_factory.mktemp("lmeval")
    rows = [{k: r[k] for k in ("prompt", "sep", "choices", "label")}
            for r in load_evalset("next_line", 60)]
    (d / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "slim_mc.yaml").write_text(MC_YAML.format(name="slim_mc", data=d / "mc.jsonl"))
    return d


def _budget_file(tmp_path, body: str) -> list[str]:
    (tmp_path / "budget.yaml").write_text(body)
    (tmp_path / "space.yaml").write_text("candidates:\n  - [export_onnx, ort_dynamic_int8]\n")
    return ["--budget", str(tmp_path / "budget.yaml"), "--space", str(tmp_path / "space.yaml"),
            "--cache", str(tmp_path / "cache")]


def test_an_lm_eval_metric_is_checked_before_any_work(lmeval_dir, tmp_path, capsys):
    files = _budget_file(tmp_path, (
        f"tasks:\n  - {{lm_eval: {{tasks: [slim_mc], include_path: {lmeval_dir}}}}}\n"
        "slim_mc.f1: {non_inferior: 0.05}\n"))
    rc = main(["search", "reference", *files, "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "slim_mc.f1: task slim_mc has no metric 'f1' (its metrics: acc, acc_norm)" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_search_screens_and_confirms_a_task_file_and_an_lm_eval_task(
        lmeval_dir, my_task, tmp_path, capsys):
    files = _budget_file(tmp_path, (
        f"tasks:\n  - {my_task}\n"
        f"  - {{lm_eval: {{tasks: [slim_mc], include_path: {lmeval_dir}}}}}\n"
        "my_lines.acc: {no_significant_loss: 10, mode: absolute}\n"
        "slim_mc.acc: {no_significant_loss: 0.1, mode: absolute}\n"))
    out = tmp_path / "s"
    rc = main(["search", "reference", *files, "--out", str(out), "--objective", "size",
               "--tune-limit", "24", "--test-limit", "24", "--threads", "2"])
    err = capsys.readouterr().err
    result = load_file(out / "search.json", "search")
    (c,) = result.candidates
    assert rc == 0 and c.status == "winner", (c.status, c.why, err)
    assert result.baseline_bytes_on_disk > c.bytes_on_disk > 0  # the frontier's ceiling reads it
    assert {(s.task, s.metric) for s in c.screening} == {("my_lines", "acc"),
                                                         ("slim_mc", "acc")}
    assert {t.metric for t in c.confirmation} == {"acc"} and len(c.confirmation) == 2
    # lm-eval's documents split by their index: tune for the screens, test for confirmation
    for split in ("tune", "test"):
        records = [json.loads(line) for line in
                   (out / "state" / f"baseline.{split}.jsonl").open()]
        for task in ("my_lines", "slim_mc"):
            ids = [r["id"] for r in records if r["task"] == task]
            assert len(ids) == 24 and {split_of(i) for i in ids} == {split}, (task, split)
    assert all(t.n == 24 for t in c.confirmation)
    # the release gate's suite scores the same tasks, the lm-eval entry as declared
    suite = yaml.safe_load((out / "best-suite.yaml").read_text())
    assert suite["tasks"] == [str(my_task), {"lm_eval": {"tasks": ["slim_mc"],
                                                         "include_path": str(lmeval_dir)}}]
    parsed = parse_suite(suite, "best-suite.yaml")
    assert set(parsed.acceptance["best"]) == {"my_lines.acc", "slim_mc.acc"}

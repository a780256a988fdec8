"""The lm-evaluation-harness bridge: lm-eval tasks on slimbench runtimes, equal to lm-eval's own
``hf`` backend, in slimbench's results rows; every task local (YAML + JSONL), nothing fetched."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

lm_eval = pytest.importorskip(
    "lm_eval", reason="the lm-eval bridge needs the lmeval extra (pip install "
                      "'slimbench[lmeval]'; `make test` installs it)")

from slimbench.bench.cli import main  # noqa: E402
from slimbench.bench.runtimes.torch_runtime import TorchRuntime  # noqa: E402
from slimbench.compress.loader import load_artifact  # noqa: E402
from slimbench.compress.reference import REFERENCE_DIR  # noqa: E402
from slimbench.errors import UsageError  # noqa: E402
from slimbench.tasks.evalsets import load_evalset  # noqa: E402
from slimbench.tasks.lmeval_spec import LmEvalSpec, parse_lmeval  # noqa: E402
from tests.lmeval_tasks import MC_YAML  # noqa: E402

os.environ["HF_DATASETS_OFFLINE"] = "1"  # the json builder reads local files only

ROLLING_YAML = """task: slim_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
num_fewshot: 0
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
"""

GEN_YAML = """task: slim_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
num_fewshot: 0
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["("]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Local lm-eval tasks on slices of the embedded held-out sets: multiple choice (12 rows
    of next_line), rolling log-likelihood (3 texts longer than the model's 256 positions)
    and greedy generation (4 method-name prompts)."""
    d = tmp_path_factory.mktemp("lmeval-tasks")
    mc = [{k: r[k] for k in ("prompt", "sep", "choices", "label")}
          for r in load_evalset("next_line", 12)]
    (d / "slim_mc.yaml").write_text(MC_YAML.format(name="slim_mc",
                                                   data=_write_jsonl(d / "mc.jsonl", mc)))
    texts = [{"text": r["text"]} for r in load_evalset("lm_stdlib", 3)]
    (d / "slim_rolling.yaml").write_text(
        ROLLING_YAML.format(data=_write_jsonl(d / "rolling.jsonl", texts)))
    gen = [{"prompt": r["prompt"], "target": r["target"]}
           for r in load_evalset("method_name", 4)]
    (d / "slim_gen.yaml").write_text(GEN_YAML.format(data=_write_jsonl(d / "gen.jsonl", gen)))
    return d


@pytest.fixture(scope="module")
def reference():
    loaded = load_artifact("reference")
    return TorchRuntime(loaded), loaded.tokenizer


def _samples(out, name):
    return sorted(out["samples"][name], key=lambda s: s["doc_id"])


def _hf_run(task_dir, names):
    """lm-eval's own hf backend on the reference checkpoint directory."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    hf = HFLM(pretrained=str(REFERENCE_DIR), device="cpu", dtype="float32", batch_size=4)
    tasks = TaskManager(include_path=str(task_dir)).load(names)
    return evaluate(lm=hf, task_dict=tasks, bootstrap_iters=0, log_samples=True)


def _bridge_run(rt, tok, task_dir, names):
    from lm_eval.evaluator import evaluate

    from slimbench.tasks.lmeval_bridge import RuntimeLM, load_tasks

    tasks = load_tasks(LmEvalSpec(tuple(names), str(task_dir)))
    return evaluate(lm=RuntimeLM(rt, tok, batch_size=3), task_dict={"tasks": tasks},
                    bootstrap_iters=0, log_samples=True)


def test_bridge_equals_lm_eval_hf_backend(task_dir, reference):
    rt, tok = reference
    names = ["slim_mc", "slim_rolling", "slim_gen"]
    hf, ours = _hf_run(task_dir, names), _bridge_run(rt, tok, task_dir, names)
    # multiple choice: every choice's log-likelihood within 1e-4, the greedy flags and the
    # accuracies equal
    deltas = []
    for a, b in zip(_samples(hf, "slim_mc"), _samples(ours, "slim_mc"), strict=True):
        assert [g for _, g in a["filtered_resps"]] == [g for _, g in b["filtered_resps"]]
        deltas += [abs(x[0] - y[0]) for x, y in zip(a["filtered_resps"], b["filtered_resps"],
                                                     strict=True)]
        assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"])
    assert len(deltas) == 48 and max(deltas) < 1e-4, max(deltas)
    for metric in ("acc,none", "acc_norm,none"):
        assert hf["results"]["slim_mc"][metric] == ours["results"]["slim_mc"][metric]
    # rolling: each text spans several 256-token windows; whole-text log-likelihoods equal
    # within PER_TEXT (float sums over ~1000 tokens: kernels differ between AVX2, AVX-512 and
    # AMX CPUs, and the two sides batch the windows differently)
    per_text = 1e-3
    rolling = list(zip(_samples(hf, "slim_rolling"), _samples(ours, "slim_rolling"),
                       strict=True))
    for a, b in rolling:
        assert a["filtered_resps"][0] == pytest.approx(b["filtered_resps"][0], abs=per_text)
        assert a["filtered_resps"][0] < -200  # a long text really, not an empty one
    # word perplexity is exp(-sum of the texts' log-likelihoods / words): each side's figure is
    # exactly that aggregate of its own samples, and the two logs then differ by at most
    # len(texts) * PER_TEXT / words. (A fixed 1e-6 on the exponential failed on AVX2 CPUs.)
    words = sum(a["word_perplexity"][1] for a, _ in rolling)
    assert words == sum(b["word_perplexity"][1] for _, b in rolling) > 100
    for out, side in ((hf, 0), (ours, 1)):
        total = sum(pair[side]["filtered_resps"][0] for pair in rolling)
        assert math.log(out["results"]["slim_rolling"]["word_perplexity,none"]) == \
            pytest.approx(-total / words, rel=1e-12)
    assert math.log(ours["results"]["slim_rolling"]["word_perplexity,none"]) == pytest.approx(
        math.log(hf["results"]["slim_rolling"]["word_perplexity,none"]),
        abs=len(rolling) * per_text / words)
    # greedy generation cut at lm-eval's stop strings: the same texts
    gen_hf = [s["filtered_resps"][0] for s in _samples(hf, "slim_gen")]
    gen_ours = [s["filtered_resps"][0] for s in _samples(ours, "slim_gen")]
    assert gen_ours == gen_hf and any(gen_ours)


def test_native_multiple_choice_equals_the_same_task_through_lm_eval(task_dir, reference,
                                                                     tmp_path):
    """The embedded next_line task (slimbench YAML) and the same rows as an lm-eval task give
    the same per-choice log-likelihoods and the same accuracies (slimbench in percent)."""
    from slimbench.tasks.generation import run_task
    from slimbench.tasks.lmeval_bridge import run_lmeval

    rt, tok = reference
    # the same batch size: the same pairs in the same batches, so the same floats
    native = run_task(rt, tok, "next_line", limit=12, resamples=0, batch_size=8)
    (bridged,) = run_lmeval(rt, tok, LmEvalSpec(("slim_mc",), str(task_dir)), resamples=0,
                            batch_size=8)
    for a, b in zip(native.examples, bridged.examples, strict=True):
        assert a.loglikelihoods == [r[0] for r in b.responses["none"]]
        assert a.scores["acc"] == 100 * b.values["acc"]
    assert native.score.metrics["acc"].value == pytest.approx(100 * bridged.score.value)
    assert native.score.metrics["acc_norm"].value == pytest.approx(
        100 * bridged.score.metrics["acc_norm"].value)


def test_eval_cli_writes_lm_eval_tasks_as_slimbench_rows(task_dir, tmp_path, capsys):
    from slimbench.schema import load_file
    from slimbench.tasks.paired import metric_rows, paired_test

    out = tmp_path / "eval.json"
    rc = main(["eval", "reference", "--task", "lm_eval:slim_mc,slim_rolling", "--task",
               "method_name", "--include-path", str(task_dir), "--limit", "6", "--threads",
               "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "slim_mc            acc = " in printed and "slim_rolling" in printed
    doc = load_file(out, "eval")  # the schema's EvalResult: validated field by field
    assert set(doc.tasks) == {"slim_mc", "slim_rolling", "method_name"}
    mc = doc.tasks["slim_mc"]
    assert (mc.metric, mc.n, mc.higher_is_better) == ("acc", 6, True)
    assert mc.metrics["acc"].value == mc.metrics["acc"].info["lm_eval_value"]
    # lm-eval's own standard error of a mean beside slimbench's bootstrap interval
    records = [json.loads(line) for line in (tmp_path / "eval.examples.jsonl").open()]
    mine = [r for r in records if r["task"] == "slim_mc"]
    values = [r["values"]["acc"] for r in mine]
    assert mc.metrics["acc"].info["lm_eval_stderr"] == pytest.approx(
        np.std(values, ddof=1) / math.sqrt(6))
    lo, hi = mc.metrics["acc"].ci95
    assert lo <= mc.value <= hi and mc.metrics["acc"].resamples == 1000
    # direction from lm-eval: lower perplexity is better
    rolling = doc.tasks["slim_rolling"]
    assert rolling.metrics["word_perplexity"].higher_is_better is False
    assert rolling.task_spec["kind"] == "lm_eval"
    # the gate's paired test reads the saved per-example values with lm-eval's aggregation
    rows = [r for r in records if r["task"] == "slim_rolling"]
    options = {m["metric"]: m for m in rolling.task_spec["metric_list"]}
    data, aggregate = metric_rows(rows, "lm_eval", "word_perplexity",
                                  options["word_perplexity"])
    assert aggregate(data) == pytest.approx(rolling.metrics["word_perplexity"].value,
                                            rel=1e-12)
    same = paired_test(rows, rows, "lm_eval", "word_perplexity", options["word_perplexity"],
                       False, "non_inferiority", "relative", 0.01)
    assert same.status == "pass" and same.delta == 0
    worse = [r | {"values": r["values"] | {"word_perplexity": [
        r["values"]["word_perplexity"][0] - 50.0, r["values"]["word_perplexity"][1]]}}
        for r in rows]  # 50 nats less likely per text: a much higher perplexity
    bad = paired_test(rows, worse, "lm_eval", "word_perplexity", options["word_perplexity"],
                      False, "non_inferiority", "relative", 0.01)
    assert bad.status == "fail" and bad.candidate > bad.baseline


@pytest.mark.slow
def test_bridge_runs_on_the_reference_ort_int8_artifact(task_dir, reference, tmp_path):
    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.steps import run_step
    from slimbench.tasks.lmeval_bridge import run_lmeval

    run_step("export_onnx", {}, "reference", tmp_path / "onnx")
    run_step("ort_dynamic_int8", {}, str(tmp_path / "onnx"), tmp_path / "int8")
    loaded = load_artifact(str(tmp_path / "int8"))
    ort = make_runtime(loaded, threads=2)
    assert ort.backend == "onnxruntime" and loaded.info.recipe == ["export_onnx",
                                                                    "ort_dynamic_int8"]
    spec = LmEvalSpec(("slim_mc", "slim_gen"), str(task_dir))
    int8 = {r.score.task: r for r in run_lmeval(ort, loaded.tokenizer, spec, resamples=100)}
    fp32 = {r.score.task: r for r in run_lmeval(*reference, spec, resamples=100)}
    assert int8["slim_mc"].score.n == 12
    assert "onnxruntime" in int8["slim_mc"].score.protocol["backend"]
    # int8 moves each choice's log-likelihood a little, not a lot, and not at all: the int8
    # graph really ran
    d = [abs(x[0] - y[0]) for a, b in zip(int8["slim_mc"].examples,
                                          fp32["slim_mc"].examples, strict=True)
         for x, y in zip(a.responses["none"], b.responses["none"], strict=True)]
    assert 0 < max(d) < 2.0 and np.mean(d) < 0.5, (max(d), np.mean(d))
    assert len(int8["slim_gen"].examples) == 4
    assert all(isinstance(e.responses["none"][0], str) for e in int8["slim_gen"].examples)


@pytest.mark.slow
def test_lm_eval_command_line_runs_the_registered_slimbench_model(task_dir, tmp_path,
                                                                  reference):
    """``lm_eval --model slimbench`` (lm-eval's own CLI with the model registered by
    importing slimbench.bench.lmeval_model) gives the bridge's numbers. In a process of its
    own: lm-eval's CLI sets up the process's logging."""
    from slimbench.tasks.lmeval_bridge import run_lmeval

    out = tmp_path / "lm-eval-out"
    proc = subprocess.run(
        [sys.executable, "-m", "slimbench.bench.lmeval_model", "--model", "slimbench",
         "--model_args", "artifact=reference,threads=2", "--tasks", "slim_mc",
         "--include_path", str(task_dir), "--batch_size", "4", "--output_path", str(out)],
        capture_output=True, text=True, timeout=300, env=os.environ | {"HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.rglob("results_*.json")
    results = json.loads(path.read_text())["results"]["slim_mc"]
    (ours,) = run_lmeval(*reference, LmEvalSpec(("slim_mc",), str(task_dir)), resamples=0)
    assert results["acc,none"] == ours.score.value and results["acc_norm,none"] == \
        ours.score.metrics["acc_norm"].value


def test_suite_cell_scores_an_lm_eval_entry(task_dir, tiny_dir):
    from slimbench.bench.measure.cell import suite_cell
    from slimbench.bench.orchestrate.suite import parse_suite
    from slimbench.reports.table import rows_from_cell

    entry = {"lm_eval": {"tasks": ["slim_mc"], "include_path": str(task_dir), "limit": 5}}
    # the tiny model has 64 positions: the default lengths (128) would be refused
    latency = {"prefill": [8], "decode_contexts": [8], "new_tokens": 2, "generate_prompt": 0,
               "repeats": 1, "min_seconds": 0}
    suite = parse_suite({"variants": {"base": {"model": str(tiny_dir)}, "other": {
        "model": str(tiny_dir), "recipe": ["torch_dynamic_int8"]}},
        "tasks": ["next_line", entry], "task_limit": 3, "latency": latency,
        "acceptance": {"other": {"slim_mc.acc": {"no_significant_loss": 0.05}}}})
    assert suite.tasks == ("next_line", entry)
    out = suite_cell(str(tiny_dir), "cpu", 1, suite.latency, list(suite.tasks),
                     suite.task_limit, True)
    rows = {r.metric: r for r in rows_from_cell(out.result)}
    assert {"slim_mc.acc", "slim_mc.acc_norm", "next_line.acc", "next_line.acc_norm",
            "next_line.macro_f1"} <= set(rows)
    assert rows["slim_mc.acc"].higher_is_better is True
    assert out.result.quality["slim_mc"].n == 5  # the entry's limit, not the suite's
    assert out.result.quality["next_line"].n == 3
    assert {e["task"] for e in out.examples} == {"slim_mc", "next_line"}


@pytest.mark.parametrize("raw,msg", [
    ("lm_eval:", "lm_eval needs task names"),
    ("lm_eval:a,a", "lm_eval task names repeat: a, a"),
    ({"lm_eval": {"tasks": ["a"], "limt": 3}}, "unknown field(s) limt"),
    ({"lm_eval": {"tasks": ["a"], "limit": 0}}, "lm_eval limit must be an integer >= 1"),
    ({"lm_eval": {"tasks": ["a"]}, "x": 1}, "a task entry that is not a name must be"),
    ({"lm_eval": {"tasks": "a", "include_path": 3}}, "include_path must be a folder path"),
])
def test_bad_lm_eval_entries_one_clear_error(raw, msg):
    with pytest.raises(UsageError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        parse_lmeval(raw)


def test_bridge_refuses_bad_input_clearly(task_dir, reference, tmp_path, capsys):
    from slimbench.tasks.lmeval_bridge import run_lmeval

    rt, tok = reference
    with pytest.raises(UsageError, match=r"lm-eval has no task 'slim_mcq'; did you mean "
                                         r"slim_mc"):
        run_lmeval(rt, tok, LmEvalSpec(("slim_mcq",), str(task_dir)))
    with pytest.raises(UsageError, match="include path /nonexistent is not a directory"):
        run_lmeval(rt, tok, LmEvalSpec(("slim_mc",), "/nonexistent"))
    sampled = tmp_path / "sampled"
    sampled.mkdir()
    (sampled / "t.yaml").write_text((task_dir / "slim_gen.yaml").read_text().replace(
        "task: slim_gen", "task: slim_sampled").replace("do_sample: false",
                                                        "do_sample: true\n  temperature: 0.7"))
    with pytest.raises(UsageError, match="asks for sampling .* slimbench generates greedily"):
        run_lmeval(rt, tok, LmEvalSpec(("slim_sampled",), str(sampled)), limit=1)
    # the command line: one line, exit 2, before any model is loaded
    capsys.readouterr()
    rc = main(["eval", "reference", "--task", "method_name", "--include-path", str(task_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and err == ("slimbench: error: --include-path applies to lm-eval tasks "
                               "(--task lm_eval:NAME)\n")
    rc = main(["eval", "reference", "--task", "lm_eval:slim_mc,method_name", "--task",
               "method_name"])
    assert rc == 2 and "task names repeat" in capsys.readouterr().err


def test_lmeval_documents_follow_the_held_out_split(task_dir, reference):
    """lm-eval documents get the tune / test split of every other task, by their doc_id; the
    records of one side are the same documents, scored the same, as in a run over all (up to
    fp32 summation order: other documents share a batch, so padding and reductions differ)."""
    from slimbench.tasks.lmeval_bridge import run_lmeval
    from slimbench.tasks.splits import split_of

    spec = LmEvalSpec(("slim_mc",), str(task_dir))
    (whole,) = run_lmeval(*reference, spec, resamples=0)
    (test,) = run_lmeval(*reference, spec, resamples=0, split="test")
    (later,) = run_lmeval(*reference, spec, resamples=0, split="tune", offset=2, limit=2)
    by_id = {r["id"]: r for r in whole.records()}
    want = [i for i in range(12) if split_of(i) == "test"]
    assert [r["id"] for r in test.records()] == want and 0 < len(want) < 12
    # A choice's log-likelihood sums fp32 log-softmax values whose logits come out of
    # reductions of up to K = 768 terms; another batch (padding, GEMM blocking: any CPU's
    # kernels) changes their order, moving each by up to about K x fp32 eps = 9e-5 of its
    # size: 1e-4 relative. Within that, two choices may swap ranks, so the 0/1 scores are
    # compared only where the best two are further apart.
    rel = 1e-4
    for r in test.records():
        same = by_id[r["id"]]
        assert (r["target"], r["prompt_hash"]) == (same["target"], same["prompt_hash"])
        mine, theirs = ([ll for ll, _ in x["responses"]["none"]] for x in (r, same))
        assert mine == pytest.approx(theirs, rel=rel)
        top = sorted(theirs, reverse=True)
        if top[0] - top[1] > 2 * rel * max(abs(top[0]), abs(top[1])):
            assert r["scores"]["acc"] == same["scores"]["acc"]  # (acc_norm ranks otherwise)
    assert [r["id"] for r in later.records()] == [i for i in range(12)
                                                  if split_of(i) == "tune"][2:4]

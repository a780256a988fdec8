import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimbench.bench.cli import main
from slimbench.compress.reference import reference_card


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_ls_lists_what_exists(capsys):
    rc, out, _ = run(capsys, "ls")
    assert rc == 0
    for name in ("reference", "shape:gpt2", "shape:gpt2-medium", "shape:distilgpt2",
                 "perplexity", "method_name", "docstring_summary", "docstring_body",
                 "next_line", "torch",
                 "torch_dynamic_int8", "export_onnx", "ort_dynamic_int8", "ort_static_int8",
                 "ort_optimize", "torch_cast", "ort_fp16", "onnxruntime"):
        assert f"  {name} " in out
    assert "\nsteps:\n" in out  # recipe steps, named as what they are
    # every registry is listed: metrics of each task kind, architecture families
    for line in ("  bleu                 [generate] ", "  acc                  [multiple_choice] ",
                 "  bits_per_byte        [perplexity] ", "  llama                llama, mistral"):
        assert line in out
    rc, out, _ = run(capsys, "ls", "tasks")
    assert rc == 0 and out.startswith("tasks:") and "shape:gpt2" not in out


def test_logging_follows_stderr_after_main_ran_under_a_closed_redirect(capfd):
    # an embedder (or pytest's capsys) runs main() with stderr redirected, then closes that
    # stream: slimbench's log handler must write to the stderr of the moment, not the closed one
    import contextlib
    import io
    import logging

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert main(["ls"]) == 0
    buf.close()
    capfd.readouterr()
    logging.getLogger("slimbench.test").warning("after the redirect")
    err = capfd.readouterr().err
    assert "Logging error" not in err and "I/O operation on closed file" not in err
    assert "WARNING slimbench.test: after the redirect" in err


def test_inspect_reference(capsys):
    rc, out, _ = run(capsys, "inspect", "reference")
    info = json.loads(out)
    assert rc == 0 and info["kind"] == "reference"
    assert info["parameters"] == reference_card().parameters


@pytest.mark.parametrize("argv,msg", [
    (["inspect", "./missing-model"], "model path './missing-model' does not exist"),
    (["inspect", "shape:gpt2:n_head=7"], "hidden size 768 is not divisible by 7 heads"),
    (["inspect", "reference", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["eval", "reference", "--task", "perplexit"], "did you mean 'perplexity'?"),
    (["eval", "shape:gpt2:n_layer=1", "--limit", "1"], "has random weights"),
    (["eval", "reference", "--limit", "0"], "--limit must be positive"),
    (["eval", "reference", "--threads", "-1"], "--threads must be positive, got -1"),
    (["demo", "--resume"], "--resume needs --out"),
    (["demo", "thread=2"], "unknown suite key 'thread'"),
    (["demo", "--out", "never-written", "threads=abc"], "threads must be an integer"),
    (["compress", "reference", "--step", "torch_dynamic_int8", "--set", "bits=4", "--out",
      "never-written"], "unknown parameter(s) bits"),
    (["compress", "reference", "--step", "torch_dynamic_int8", "--set", "bits", "--out",
      "never-written"], "must look like key=value"),
    (["compress", "reference", "--step", "prune", "--out", "never-written"],
     "unknown recipe step 'prune'"),
    (["validate", "never-written"], "never-written does not exist"),
])
def test_bad_input_one_clear_error(capsys, argv, msg):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("slimbench: error: ") and msg in err
    assert "Traceback" not in err
    assert not Path("never-written").exists()


def test_unknown_command_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_eval_writes_results(capsys, tmp_path):
    out_file = tmp_path / "eval.json"
    rc, out, _ = run(capsys, "eval", "reference", "--task", "method_name", "--limit", "4",
                     "--threads", "1", "--out", str(out_file))
    assert rc == 0 and "method_name" in out
    data = json.loads(out_file.read_text())
    assert data["tasks"]["method_name"]["n"] == 4
    assert data["environment"]["torch_threads"] == 1
    # a second run never overwrites the first result
    rc, _, err = run(capsys, "eval", "reference", "--limit", "1", "--out", str(out_file))
    assert rc == 2 and "already exists" in err
    assert json.loads(out_file.read_text()) == data


TINY_DEMO = """
name: tiny-demo
variants:
  baseline: {model: reference}
  torch-int8: {model: reference, recipe: [torch_dynamic_int8]}
  shape: {model: "shape:gpt2:n_layer=1,n_embd=32,n_head=2,n_positions=64"}
devices: [cpu, cuda]
threads: 1
latency: {prefill: [16], decode_contexts: [16], new_tokens: 4, generate_prompt: 8, repeats: 1,
          min_seconds: 0}
tasks: [perplexity, method_name]
task_limit: 2
perplexity_limit: 3
acceptance:
  torch-int8:
    perplexity.perplexity: {non_inferior: 0.5}
    parameters: {ratio_at_most: 1.0}
    decode_ms_per_token: {slowdown_at_most: 10}
paired: {min_seconds: 0, max_seconds: 1, trial_seconds: 0.01}
"""


@pytest.mark.slow
def test_demo_runs_reports_and_gates(capsys, tmp_path, monkeypatch):
    from slimbench.bench.orchestrate import demo

    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_DEMO)
    monkeypatch.setattr(demo, "DEMO_SUITE", suite)
    first = tmp_path / "runs" / "first"
    # the committed baseline measured another suite (task_limit, tasks, ...): its figures do
    # not apply, so the demo says so and skips that gate, but the report is written
    rc, out, err = run(capsys, "demo", "--out", str(first))
    assert rc == 0 and "note: the gate will be skipped: demo-cpu and this demo run " \
        "measure different things: tasks: " in out and "task_limit: 20 -> 2" in out
    assert f"report: {first / 'report.html'}" in out and (first / "report.html").is_file()
    assert "verdict against demo-cpu: SKIPPED (" in out and not (first / "gate.md").exists()
    assert "[torch-int8 1/1] torch_dynamic_int8" in out
    # the acceptance criteria were judged within the run (cuda ones skipped without a GPU)
    assert "acceptance: PASS (" in out and (first / "acceptance.md").is_file()
    criteria = json.loads((first / "acceptance.json").read_text())["criteria"]
    cpu = {c["metric"]: c for c in criteria if c["device"] == "cpu"}
    assert {c["status"] for c in cpu.values()} == {"pass"} and len(cpu) == 3
    assert cpu["parameters"]["value"] == 1.0  # dynamic int8 keeps the parameter count
    # the same build against its own results: quality and size identical, latency reported
    second = tmp_path / "runs" / "second"
    rc, out, _ = run(capsys, "demo", "--out", str(second), "--baseline",
                     str(first / "results.json"))
    assert rc == 0, out
    assert "torch_dynamic_int8" not in out  # the artifact came from the cache
    verdict = (second / "gate.md").read_text().splitlines()[0]
    assert verdict.startswith("**slimbench gate: PASS** (") and "reported, not gated" in verdict
    # quality was tested paired on the same examples: both runs saved them
    paired = re.search(r"\(demo-policy\.yaml; (\d+) quality checks paired\): PASS", out)
    quality = [line for line in (second / "gate.md").read_text().splitlines()
               if "| perplexity." in line or "| method_name." in line]
    assert paired and int(paired.group(1)) == len(quality) > 0, out
    cells = json.loads((second / "cells" / "shape--cpu.json").read_text())
    assert cells["status"] == "ok" and cells["quality"] == {}  # random weights: timed only
    skipped = json.loads((second / "cells" / "baseline--cuda.json").read_text())
    if not torch.cuda.is_available():
        assert skipped["status"] == "skipped"
        assert skipped["reason"] == "no CUDA GPU on this machine"


def test_committed_demo_baseline_matches_the_demo_suite():
    from slimbench.bench.orchestrate.demo import (
        DEMO_BASELINE,
        DEMO_FULL_SUITE,
        DEMO_POLICY,
        DEMO_SUITE,
    )
    from slimbench.bench.orchestrate.suite import load_suite
    from slimbench.reports.gate import load_policy, suite_differences
    from slimbench.reports.table import load_results

    suite = load_suite(DEMO_FULL_SUITE)
    baseline = load_results(DEMO_BASELINE)
    rows, recorded = [r.to_dict() for r in baseline.rows], baseline.suite
    # the quick demo is the full one's subset, with the same settings: the baseline gates both
    quick = load_suite(DEMO_SUITE)
    assert {v.name for v in quick.variants} < {v.name for v in suite.variants}
    assert suite_differences(json.loads(json.dumps(suite.to_dict())),
                             json.loads(json.dumps(quick.to_dict()))) == []
    # tasks added to the demo since the baseline was made (next_line) bring new metrics,
    # which the demo's gate does not compare until the baseline is made again
    assert set(recorded["tasks"]) <= set(suite.tasks)
    assert {r["variant"] for r in rows} == {v.name for v in suite.variants}
    for v in suite.variants:
        tasks = {r["metric"].split(".")[0] for r in rows
                 if r["variant"] == v.name and r["kind"] == "quality"}
        assert tasks == (set(recorded["tasks"]) if v.quality else set()), v.name
        assert any(r["variant"] == v.name and r["metric"] == "decode_ms_per_token@128"
                   for r in rows)
    policy = load_policy(DEMO_POLICY)
    assert policy.allowance("latency", "decode_ms_per_token@128") == ("report", None)
    assert policy.allowance("quality", "perplexity.perplexity") == ("relative", 0.02)
    # the committed run keeps what paired tests need: every scored variant's examples of
    # every task, and every cell's environment
    from slimbench.reports.evidence import load_evidence

    evidence = load_evidence(DEMO_BASELINE)
    for v in suite.variants:
        ev = evidence[f"{v.name}--cpu"]
        assert ev.fingerprint and ev.fingerprint["isa"], v.name
        if v.quality:
            for task in recorded["tasks"]:
                n = suite.perplexity_limit if task == "perplexity" else suite.task_limit
                assert len(ev.tasks[task].examples) == n, (v.name, task)


@pytest.mark.slow
def test_console_script_installed():
    exe = Path(sys.executable).with_name("slimbench")
    proc = subprocess.run([str(exe), "inspect", "/nonexistent/model"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == \
        "slimbench: error: model path '/nonexistent/model' does not exist"


TASK_YAML = """
name: my_names
version: 1
dataset: {path: rows.jsonl}
prompt: "{code}"
target: "{name}"
generation: {max_new_tokens: 6, stop: ["("], postprocess: identifier, batch_size: 2}
metric_list:
  - {metric: f1, higher_is_better: true}
  - {metric: exact_match, higher_is_better: true}
"""


@pytest.mark.slow
def test_eval_task_file_writes_results_and_examples(capsys, tmp_path):
    rows = [{"code": "class A:\n    def get_value(self):\n        return 1\n\n    def ",
             "name": "set_value"},
            {"code": "import os\n\n\ndef ", "name": "main"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my.yaml").write_text(TASK_YAML)
    out_file = tmp_path / "res.json"
    rc, out, _ = run(capsys, "eval", "reference", "--task", str(tmp_path / "my.yaml"),
                     "--task", "perplexity", "--limit", "2", "--resamples", "20",
                     "--baseline", "reference", "--out", str(out_file))
    assert rc == 0 and "my_names" in out and "95% CI" in out
    data = json.loads(out_file.read_text())
    assert data["examples_file"] == "res.examples.jsonl"
    task = data["tasks"]["my_names"]
    assert task["n"] == 2 and "examples" not in task
    assert task["metrics"]["f1"]["resamples"] == 20 and task["protocol"]["batch_size"] == 2
    lines = [json.loads(x) for x in (tmp_path / "res.examples.jsonl").read_text().splitlines()]
    assert [(x["task"], x["id"]) for x in lines] == [("my_names", 0), ("my_names", 1),
                                                     ("perplexity", "lm-0000"),
                                                     ("perplexity", "lm-0001")]
    assert [x["reference"] for x in lines[:2]] == ["set_value", "main"]
    # mean of per-example exact match is the task's exact match
    em = [x["scores"]["exact_match"] for x in lines[:2]]
    assert task["metrics"]["exact_match"]["value"] == pytest.approx(sum(em) / 2)
    ppl = data["tasks"]["perplexity"]
    assert sum(x["tokens"] for x in lines[2:]) == ppl["scores"]["tokens"]
    fid = data["fidelity"]["metrics"]  # the model against itself
    assert fid["top1_agreement"]["value"] == 1.0 and fid["greedy_exact_match"]["value"] == 1.0
    assert fid["kl_nats"]["value"] == pytest.approx(0.0, abs=1e-12)


def test_eval_never_overwrites_examples(capsys, tmp_path):
    (tmp_path / "r.examples.jsonl").write_text("keep me\n")
    rc, _, err = run(capsys, "eval", "reference", "--task", "method_name", "--limit", "1",
                     "--out", str(tmp_path / "r.json"))
    assert rc == 2 and "r.examples.jsonl already exists" in err
    assert not (tmp_path / "r.json").exists()
    assert (tmp_path / "r.examples.jsonl").read_text() == "keep me\n"


def test_eval_bad_task_file_one_clear_error(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TASK_YAML.replace("max_new_tokens: 6", "max_new_tokens: -1"))
    rc, _, err = run(capsys, "eval", "reference", "--task", str(bad))
    assert rc == 2 and err.count("\n") == 1
    assert "max_new_tokens must be positive, got -1" in err and str(bad) in err

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
                 "perplexity", "method_name", "docstring_summary", "docstring_body", "torch",
                 "torch_dynamic_int8", "export_onnx", "ort_dynamic_int8", "ort_static_int8",
                 "ort_optimize", "torch_cast", "ort_fp16", "onnxruntime"):
        assert f"  {name} " in out
    rc, out, _ = run(capsys, "ls", "tasks")
    assert rc == 0 and out.startswith("tasks:") and "shape:gpt2" not in out


def test_inspect_reference(capsys):
    rc, out, _ = run(capsys, "inspect", "reference")
    info = json.loads(out)
    assert rc == 0 and info["kind"] == "reference"
    assert info["parameters"] == reference_card()["parameters"]


@pytest.mark.parametrize("argv,msg", [
    (["inspect", "./missing-model"], "model path './missing-model' does not exist"),
    (["inspect", "shape:gpt2:n_head=7"], "not divisible by n_head=7"),
    (["inspect", "reference", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["eval", "reference", "--task", "perplexit"], "did you mean 'perplexity'?"),
    (["eval", "shape:gpt2:n_layer=1", "--limit", "1"], "has random weights"),
    (["eval", "reference", "--limit", "0"], "--limit must be positive"),
    (["demo", "--limit", "-3"], "--limit must be positive"),
    (["compress", "reference", "--step", "torch_dynamic_int8", "--set", "bits=4", "--out",
      "never-written"], "unknown parameter(s) bits"),
    (["compress", "reference", "--step", "torch_dynamic_int8", "--set", "bits", "--out",
      "never-written"], "must look like key=value"),
    (["compress", "reference", "--step", "prune", "--out", "never-written"],
     "unknown recipe step 'prune'"),
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


def test_demo_end_to_end(capsys, tmp_path):
    rc, out, _ = run(capsys, "demo", "--limit", "2", "--threads", "2", "--out", str(tmp_path))
    assert rc == 0
    (path,) = tmp_path.glob("demo-*.json")
    data = json.loads(path.read_text())
    assert set(data["tasks"]) == {"perplexity", "method_name", "docstring_summary",
                                  "docstring_body"}
    assert data["tasks"]["method_name"]["n"] == 2
    assert data["latency"][0]["ms"]["median"] > 0
    assert data["latency"][1]["ms_per_token"]["median"] > 0
    assert "loaded the embedded reference" in out and "prefill(128)" in out


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
    fid = data["tasks"]["fidelity"]  # the model against itself
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

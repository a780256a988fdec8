"""Run integrity (issue 12): content-addressed and verified artifact cache, concurrent runs,
safe names, contained failures, exit codes, killed runs.

The gate's inputs and the loader's messages are in test_gate_inputs.py and test_messages.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from transformers import GPT2Config, GPT2LMHeadModel

from slimbench.bench.cli import main
from slimbench.compress.artifact import STAGING_MARK, read_manifest
from slimbench.compress.cache import ArtifactCache
from slimbench.compress.loader import load_artifact
from slimbench.errors import ModelLoadError

HERE = Path(__file__).parent
LATENCY = ("latency: {prefill: [8], decode_contexts: [8], new_tokens: 2, generate_prompt: 0, "
           "repeats: 1, min_seconds: 0}")


def suite_yaml(path: Path, variants: str, tasks: str = "[perplexity]") -> Path:
    path.write_text(f"name: t\nvariants:\n{variants}\ndevices: [cpu]\nthreads: 1\n{LATENCY}\n"
                    f"tasks: {tasks}\nperplexity_limit: 3\ntimeout: 300\n")
    return path


def cell(run: Path, name: str) -> dict:
    return json.loads((run / "cells" / f"{name}--cpu.json").read_text())


def ppl(run: Path, name: str) -> float:
    return cell(run, name)["quality"]["perplexity"]["value"]


@pytest.fixture(autouse=True)
def _cells_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture
def test_steps():
    import integrity_driver

    integrity_driver.register()


@pytest.fixture
def model_dir(tmp_path, ref_tokenizer):
    """A local HF directory that the perplexity task can score (256 positions)."""
    d = tmp_path / "model"
    config = GPT2Config(vocab_size=len(ref_tokenizer), n_positions=256, n_embd=32, n_layer=2,
                        n_head=4)
    config.save_pretrained(d)
    _save(d, seed=0)
    ref_tokenizer.save_pretrained(d)
    return d


def _save(model_dir: Path, seed: int) -> None:
    """New random weights in the same shape (the user retrained the checkpoint)."""
    config = GPT2Config.from_pretrained(model_dir)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).eval().save_pretrained(model_dir)


@pytest.mark.slow
def test_edited_model_rebuilds_and_flipped_byte_is_detected(model_dir, tmp_path, capsys):
    tiny_dir = model_dir
    suite = suite_yaml(tmp_path / "s.yaml", f"  plain: {{model: '{tiny_dir}'}}\n"
                       f"  int8: {{model: '{tiny_dir}', recipe: [torch_dynamic_int8]}}")
    cache = tmp_path / "cache"
    args = ["run", str(suite), "--cache", str(cache), "--out"]
    assert main([*args, str(tmp_path / "a")]) == 0
    a = tmp_path / "a"
    artifact_a = cell(a, "int8")["cell"]["artifact"]

    _save(tiny_dir, seed=1)  # the user retrains: same path, other weights
    assert main([*args, str(tmp_path / "b")]) == 0
    b = tmp_path / "b"
    assert cell(b, "int8")["cell"]["artifact"] != artifact_a  # rebuilt from the new weights
    assert ppl(b, "int8") != pytest.approx(ppl(a, "int8"), rel=1e-3)
    assert ppl(b, "int8") == pytest.approx(ppl(b, "plain"), rel=0.02)  # same model, int8
    assert cell(b, "int8")["artifact"]["manifest"]["parent"]["weights_sha256"] == \
        cell(b, "plain")["artifact"]["weights_sha256"]
    capsys.readouterr()
    assert main([*args, str(a), "--resume"]) == 0  # finished cells of the old weights...
    assert capsys.readouterr().out.count("changed since it was measured") == 2
    assert ppl(a, "int8") == ppl(b, "int8") and ppl(a, "plain") == ppl(b, "plain")  # ...redone

    # a byte flipped inside the cached int8 artifact's weights
    weights = Path(cell(b, "int8")["cell"]["artifact"]) / "int8_linears.safetensors"
    good = weights.read_bytes()
    data = bytearray(good)
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="does not match its manifest.*sha256"):
        load_artifact(str(weights.parent))  # eval / inspect refuse it too
    capsys.readouterr()
    assert main([*args, str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert out.count("warning: cached artifact") == 1 and "sha256 differs" in out
    assert weights.read_bytes() == good  # rebuilt: the same bytes as before the flip
    assert ppl(tmp_path / "c", "int8") == ppl(b, "int8")
    sha = cell(tmp_path / "c", "int8")["artifact"]["weights_sha256"]
    assert sha == cell(b, "int8")["artifact"]["weights_sha256"]

    # the cheap size check: a truncated file is caught without hashing
    ArtifactCache(cache, print).build(str(tiny_dir), (("torch_dynamic_int8", {}),))
    weights.write_bytes(good[:-10])
    said = []
    again = ArtifactCache(cache, said.append)
    again._verified.add(weights.parent.name)  # as if fully verified earlier in this run
    assert again.build(str(tiny_dir), (("torch_dynamic_int8", {}),)) == str(weights.parent)
    assert len(said) == 2 and "int8_linears.safetensors has" in said[0]
    assert "bytes, the manifest recorded" in said[0] and "torch_dynamic_int8" in said[1]
    assert weights.read_bytes() == good


@pytest.mark.slow
def test_cache_key_is_content_not_spec(tiny_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    cache = ArtifactCache(tmp_path / "cache", lambda _: None)
    int8 = (("torch_dynamic_int8", {}),)
    assert cache.build(str(tiny_dir), int8) == cache.build(str(copy), int8)  # same content
    parent = cache.identity(str(tiny_dir))
    key = cache.step_key(parent, "torch_dynamic_int8", {})
    same = cache.step_key(parent, "torch_dynamic_int8",
                          {"engine": "x86"})  # the default, spelled out: the same config
    other = cache.step_key(parent, "torch_dynamic_int8", {"include_lm_head": True})
    assert key == same != other


@pytest.mark.slow
def test_two_concurrent_runs_share_one_cache(model_dir, tmp_path):
    tiny_dir = model_dir
    suite = suite_yaml(tmp_path / "s.yaml",
                       f"  onnx: {{model: '{tiny_dir}', recipe: [export_onnx]}}")
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(HERE))
    procs = [subprocess.Popen([sys.executable, "-m", "slimbench.bench.cli", "run", str(suite),
                               "--out", str(tmp_path / f"r{i}"), "--cache", str(cache)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for i in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert ppl(tmp_path / "r1", "onnx") == ppl(tmp_path / "r2", "onnx")
    built = [d for d in cache.iterdir() if not d.name.startswith(".")]
    assert len(built) == 1 and not list(cache.glob("*.partial"))
    assert sum("] export_onnx" in o for o in outs) == 1  # one built, the other reused


@pytest.mark.parametrize("name", ["../../../victim/x", "/abs/x", "sub/x", ".hidden", "a b"])
def test_unsafe_variant_names_are_refused(tmp_path, capsys, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x--cpu.json").write_text("mine")
    suite = suite_yaml(tmp_path / "s.yaml", f"  '{name}': {{model: reference}}")
    run = tmp_path / "runs" / "deep" / "r"
    assert main(["run", str(suite), "--out", str(run)]) == 2
    assert f"variant name {name!r} is not allowed" in capsys.readouterr().err
    assert (victim / "x--cpu.json").read_text() == "mine" and not (tmp_path / "runs").exists()
    assert not Path("/abs").exists()


def test_duplicate_variant_names_are_refused(tmp_path, capsys):
    suite = suite_yaml(tmp_path / "s.yaml", "  a: {model: reference}\n  a: {model: 'shape:gpt2'}")
    assert main(["run", str(suite), "--out", str(tmp_path / "r")]) == 2
    assert "'a' is given twice (lines 3 and 4)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_task_metrics_are_named_by_the_task_not_its_path(tmp_path):
    from slimbench.bench.measure.cell import suite_cell

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"q": "def f(x):", "a": "return"}\n')
    task = tmp_path / "t.yaml"
    task.write_text("name: my_task\ndataset: {path: rows.jsonl}\nprompt: '{q}'\n"
                    "target: '{a}'\ngeneration: {max_new_tokens: 2}\n"
                    "metric_list: [{metric: exact_match, higher_is_better: true}]\n")
    out = suite_cell("reference", "cpu", 1, {"prefill": [8], "decode_contexts": [8],
                                             "new_tokens": 2, "generate_prompt": 0,
                                             "repeats": 1, "min_seconds": 0},
                     [str(task)], 1, True)
    assert list(out.result.quality) == ["my_task"]
    task.write_text(task.read_text().replace("my_task", "../up"))
    suite = suite_yaml(tmp_path / "s.yaml", "  a: {model: reference}", f"['{task}']")
    assert main(["run", str(suite), "--out", str(tmp_path / "r")]) == 2


@pytest.mark.slow
def test_failures_are_contained_and_exit_3(model_dir, tmp_path, test_steps, capsys):
    tiny_dir = model_dir
    suite = suite_yaml(tmp_path / "s.yaml",
                       f"  bad: {{model: '{tiny_dir}', recipe: [sleepy, boom]}}\n"
                       f"  bad2: {{model: '{tiny_dir}', recipe: [sleepy, boom, sleepy]}}\n"
                       f"  good: {{model: '{tiny_dir}', recipe: [sleepy]}}")
    run = tmp_path / "r"
    assert main(["run", str(suite), "--out", str(run), "--cache", str(tmp_path / "c")]) == 3
    captured = capsys.readouterr()
    assert "2 of 3 cells failed (bad--cpu, bad2--cpu)" in captured.err
    assert captured.out.count("] boom") == 1  # the shared failing step ran once
    for name in ("bad", "bad2"):
        assert cell(run, name)["reason"] == ("building the artifact: RuntimeError: boom: a "
                                             "library failed inside the step")
        assert "Traceback" in cell(run, name)["traceback"]
    assert cell(run, "good")["status"] == "ok" and (run / "report.html").is_file()
    assert main(["run", str(suite), "--out", str(run), "--resume",
                 "--cache", str(tmp_path / "c")]) == 3  # resume: the same, no crash

    only_bad = suite_yaml(tmp_path / "b.yaml", f"  bad: {{model: '{tiny_dir}', recipe: [boom]}}")
    assert main(["run", str(only_bad), "--out", str(tmp_path / "r2")]) == 3


def test_incompatible_step_inputs_are_refused_before_work(tmp_path, capsys):
    onnx = tmp_path / "onnx"
    int8 = tmp_path / "int8"
    tiny = "shape:gpt2:n_layer=1,n_embd=32,n_head=2,n_positions=64,vocab_size=128"
    assert main(["compress", tiny, "--step", "export_onnx", "--out", str(onnx)]) == 0
    assert main(["compress", tiny, "--step", "torch_dynamic_int8", "--out", str(int8)]) == 0
    capsys.readouterr()
    cases = [(onnx, "torch_dynamic_int8", "an ONNX artifact"),
             (int8, "export_onnx", "a torch dynamic-int8 artifact"),
             (int8, "torch_cast", "a torch dynamic-int8 artifact"),
             (int8, "torch_dynamic_int8", "a torch dynamic-int8 artifact")]
    for src, step, what in cases:
        out = tmp_path / f"{src.name}-{step}"
        assert main(["compress", str(src), "--step", step, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"step {step} needs a float32 torch model; " \
            f"'{src}' is {what}" in err
        assert not out.exists()
    suite = suite_yaml(tmp_path / "s.yaml", f"  x: {{model: '{onnx}', recipe: [distill]}}")
    assert main(["run", str(suite), "--out", str(tmp_path / "r")]) == 2
    assert (f"variant x: step distill needs a float32 torch model; '{onnx}' is an ONNX "
            "artifact") in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: [export_onnx, prune_unstructured: {sparsity: 0.5}]\n")
    assert main(["compress", tiny, "--recipe", str(recipe), "--out", str(tmp_path / "o")]) == 2
    assert ("step prune_unstructured needs a float32 torch model; the output of step 1 "
            "(export_onnx) is an ONNX artifact") in capsys.readouterr().err


def test_recipe_is_all_or_nothing(tiny_dir, tmp_path, test_steps):
    from slimbench.compress.recipe import Recipe, run_recipe

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        run_recipe(Recipe([("sleepy", {}), ("boom", {})]), str(tiny_dir), out, say=print)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    manifests = run_recipe(Recipe([("sleepy", {}), ("sleepy", {})]), str(tiny_dir), out)
    assert sorted(p.name for p in out.iterdir()) == ["01-sleepy", "02-sleepy", "recipe.json"]
    assert manifests[1].parent.spec == str(out / "01-sleepy")  # not the staging path
    assert read_manifest(out / "02-sleepy").parent.spec == str(out / "01-sleepy")


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("my report")
    (mine / "results.csv").write_text("my numbers")
    suite = suite_yaml(tmp_path / "s.yaml", "  a: {model: reference}")
    assert main(["run", str(suite), "--out", str(mine), "--resume"]) == 2
    assert "not a slimbench run directory (no suite.json)" in capsys.readouterr().err
    assert (mine / "report.html").read_text() == "my report"
    assert sorted(p.name for p in mine.iterdir()) == ["report.html", "results.csv"]


def _driver(suite: Path, run: Path, cache: Path, target: str | None, env: dict, log: Path):
    cmd = [sys.executable, str(HERE / "integrity_driver.py"), str(suite), str(run), str(cache)]
    return subprocess.Popen(cmd + ([target] if target else []), env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for(predicate, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")  # a zombie is dead too
    return not (status.exists() and "\nState:\tZ" in status.read_text())


@pytest.mark.slow
def test_sigkill_during_a_build_leaves_nothing_behind(model_dir, tmp_path):
    tiny_dir = model_dir
    suite = suite_yaml(tmp_path / "s.yaml", f"  a: {{model: '{tiny_dir}', recipe: [sleepy]}}")
    cache = tmp_path / "cache"
    env = dict(os.environ, SLIMBENCH_TEST_SLEEP="60", PYTHONPATH=str(HERE))
    proc = _driver(suite, tmp_path / "r", cache, None, env, tmp_path / "log1")
    _wait_for(lambda: list(cache.glob(".*.partial/building")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(cache.glob(".*.partial"))  # the killed builder's staging folder

    env["SLIMBENCH_TEST_SLEEP"] = "0"
    rerun = _driver(suite, tmp_path / "r", cache, None, env, tmp_path / "log2")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "log2").read_text()
    assert "a--cpu=ok" in (tmp_path / "log2").read_text()
    assert not list(cache.glob(".*.partial"))
    assert [p.name.split("-", 1)[1] for p in cache.iterdir() if not p.name.startswith(".")] \
        == ["sleepy"]


def marked(folder: Path, out_name: str) -> Path:
    """A staging folder as compress/artifact.py's make_staging leaves it: with its mark."""
    folder.mkdir()
    (folder / STAGING_MARK).write_text(json.dumps({"out": out_name, "owner": "test"}))
    return folder


def test_sweep_keeps_a_live_builders_staging_folder(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    abc, def_ = "a" * 20 + "-sleepy", "d" * 20 + "-sleepy"
    live = marked(cache / f".{abc}.x1.partial", abc)
    dead = marked(cache / f".{def_}.x2.partial", def_)
    with FileLock(str(cache / f".{abc}.lock")):  # a build of that key is under way
        ArtifactCache(cache, print)
    assert live.is_dir() and not dead.exists()


@pytest.mark.slow
def test_sigkill_during_a_cell_kills_the_cell(tmp_path):
    suite = suite_yaml(tmp_path / "s.yaml", "  a: {model: reference}")
    pidfile = tmp_path / "cell.pid"
    env = dict(os.environ, SLIMBENCH_TEST_PIDFILE=str(pidfile), SLIMBENCH_TEST_SLEEP="60",
               PYTHONPATH=str(HERE))
    log = tmp_path / "log1"
    proc = _driver(suite, tmp_path / "r", tmp_path / "c", "isolation_cells:record_and_sleep",
                   env, log)
    _wait_for(lambda: pidfile.is_file() and pidfile.read_text())
    cell_pid = int(pidfile.read_text())
    assert _alive(cell_pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _wait_for(lambda: not _alive(cell_pid), seconds=15)  # no orphan
    time.sleep(1)
    assert "Traceback" not in log.read_text()

    env["SLIMBENCH_TEST_SLEEP"] = "0"
    rerun = _driver(suite, tmp_path / "r", tmp_path / "c", "isolation_cells:record_and_sleep",
                    env, tmp_path / "log2")
    assert rerun.wait(timeout=300) == 0
    assert "a--cpu=ok" in (tmp_path / "log2").read_text()


def test_staging_left_by_a_dead_process_is_removed(tmp_path):
    import socket

    from slimbench.compress.artifact import staging_dir

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    left = marked(tmp_path / f".out.{host}-{dead}.abc.partial", "out")
    live = marked(tmp_path / f".out.{host}-{os.getpid()}.def.partial", "out")
    # another host's: not ours to judge; an unmarked one: not slimbench's at all
    other = marked(tmp_path / f".out.elsewhere-{dead}.ghi.partial", "out")
    foreign = tmp_path / f".out.{host}-{dead}.jkl.partial"
    foreign.mkdir()
    with staging_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "out" / "f").read_text() == "x"
    assert not left.exists() and live.is_dir() and other.is_dir() and foreign.is_dir()

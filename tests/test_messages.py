"""Errors a user can fix read as one clear line, fast (issue 12: run integrity)."""

import json
import time

import pytest
import torch
from huggingface_hub import HfApi, constants
from safetensors.torch import load_file, save_file

from slimbench.bench.cli import main
from slimbench.compress.loader import load_artifact
from slimbench.compress.steps import STEPS, make_config
from slimbench.errors import ModelLoadError, UsageError

RETRY_STORM_S = 5.0  # transformers' retries take ~25 s; a clear failure takes well under 1 s


def _timed_error(spec: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_artifact(spec)
    return str(err.value), time.perf_counter() - t0


def test_missing_relative_path_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()  # m/ exists here, so m/doesnotexist is a path, not a hub id
    msg, took = _timed_error("m/doesnotexist")
    assert "model path 'm/doesnotexist' does not exist" in msg and "\n" not in msg
    assert took < RETRY_STORM_S


def test_unknown_hub_id_offline_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local m/: read as a hub id; conftest sets HF_HUB_OFFLINE
    msg, took = _timed_error("m/doesnotexist")
    assert "'m/doesnotexist'" in msg and "not in the local Hugging Face cache" in msg
    assert "HF_HUB_OFFLINE" in msg and "\n" not in msg
    assert took < RETRY_STORM_S


def test_unreachable_hub_is_asked_once(tmp_path, monkeypatch):
    calls = []

    def unreachable(self, repo_id, **kw):  # stands in for the network: nothing leaves here
        calls.append(kw.get("timeout"))
        raise ConnectionError("Name or service not known")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "model_info", unreachable)
    msg, took = _timed_error("m/doesnotexist")
    assert "the hub could not be reached (Name or service not known)" in msg
    assert len(calls) == 1 and calls[0] is not None and took < RETRY_STORM_S


def test_wrong_tensor_shape_names_tensor_and_both_shapes(tiny_dir):
    f = tiny_dir / "model.safetensors"
    tensors = load_file(f)
    tensors["transformer.h.0.attn.c_attn.weight"] = torch.zeros(32, 64)  # config implies 32x96
    save_file(tensors, f, metadata={"format": "pt"})
    msg, _ = _timed_error(str(tiny_dir))
    assert "transformer.h.0.attn.c_attn.weight is [32, 64] in the checkpoint but [32, 96]" in msg
    assert "above report" not in msg and "\n" not in msg


def test_remote_code_refusal_names_the_cli_flag(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg.update(model_type="my-gpt", auto_map={"AutoConfig": "my_code.MyConfig",
                                              "AutoModelForCausalLM": "my_code.MyModel"})
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    (tiny_dir / "my_code.py").write_text("raise SystemExit('remote code ran')\n")
    msg, _ = _timed_error(str(tiny_dir))
    assert "ships its own model code (auto_map in config.json)" in msg
    assert "--trust-remote-code" in msg and "trust_remote_code=True" not in msg


@pytest.mark.parametrize(("params", "message"), [
    ({"sparsity": "abc"}, "step prune_unstructured: sparsity must be a number, got 'abc'"),
    ({"sparsity": True}, "sparsity must be a number, got True"),
    ({"calib_samples": 1.5}, "calib_samples must be an integer, got 1.5"),
    ({"include_lm_head": 1}, "include_lm_head must be true or false, got 1"),
    ({"n_m": 2}, "n_m must be a string, got 2"),
])
def test_step_parameter_types_checked(params, message):
    with pytest.raises(UsageError) as err:
        make_config(STEPS.get("prune_unstructured"), params)
    assert message in str(err.value)


def test_step_parameter_types_accept_what_fits():
    config = make_config(STEPS.get("prune_unstructured"), {"sparsity": 0.5, "calib_samples": 4})
    assert config.sparsity == 0.5
    assert make_config(STEPS.get("distill"), {"temperature": 2}).temperature == 2  # int: a float


def test_cli_bad_set_value_is_one_line_exit_2(capsys, tmp_path):
    rc = main(["compress", "reference", "--step", "prune_unstructured", "--set", "sparsity=abc",
               "--out", str(tmp_path / "X")])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "X").exists()
    assert err == ("slimbench: error: step prune_unstructured: sparsity must be a number, "
                   "got 'abc'\n")


def test_cli_missing_relative_path_is_one_line_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    rc = main(["inspect", "m/doesnotexist"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "'m/doesnotexist' does not exist" in err


SUITE = ("name: t\nvariants:\n  a: {model: reference}\ndevices: [cpu]\nthreads: 1\n"
         "tasks: [perplexity]\nperplexity_limit: 2\n")
PPL_TASK = ("name: t1\nkind: perplexity\ndataset: {evalset: lm_stdlib}\ntext: '{text}'\n"
            "perplexity: {context_length: abc}\n"
            "metric_list: [{metric: perplexity, higher_is_better: false}]\n")


@pytest.mark.parametrize("args, message", [
    (["eval", "reference", "--task", "bin.yaml"], "bin.yaml is not a UTF-8 text file"),
    (["run", "bin.yaml", "--out", "R"], "suite file bin.yaml is not a UTF-8 text file"),
    (["validate", "bin.yaml"], "bin.yaml is not a UTF-8 text file"),
    (["eval", "reference", "--task", "perplexity", "--out", "file.txt/x.json"],
     "file.txt is a file, not a folder"),
    (["compress", "reference", "--step", "torch_dynamic_int8", "--out", "file.txt/sub"],
     "file.txt is a file, not a folder"),
    (["run", "s.yaml", "--out", "file.txt/R"], "file.txt is a file, not a folder"),
    (["run", "s.yaml", "--out", "R", "--cache", "file.txt"], "file.txt is a file, not a folder"),
    (["eval", "reference", "--task", "t1.yaml"],
     "perplexity.context_length must be an integer, got 'abc'"),
    (["run", "s.yaml", "--out", "R", "timeout=.nan"], "timeout must be a number, got nan"),
    (["run", "s.yaml", "--out", "R", "threads=99999999999"], "threads in [0, 4096]"),
    (["eval", "reference", "--threads", "99999999999"], "--threads must be at most 4096"),
    (["eval", "reference", "--resamples", "100000000000000"], "--resamples must be in"),
    (["run", "s.yaml", "--out", "R", "tasks=[perplexity"], "is not a YAML value"),
    (["run", "s.yaml", "--out", "R", "variants.a.recipe=foo"], "recipe must be a list of steps"),
    (["compress", "--recipe", "adir", "--out", "o"], "recipe file adir is a folder"),
    (["run", "s.yaml", "--out", "R", "name=[x,y]"], "name must be text"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00\x81bad")
    (tmp_path / "file.txt").write_text("")
    (tmp_path / "adir").mkdir()
    (tmp_path / "s.yaml").write_text(SUITE)
    (tmp_path / "t1.yaml").write_text(PPL_TASK)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "R").exists() and not (tmp_path / "o").exists()

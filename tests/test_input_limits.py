"""Inputs beyond what a model or machine can take, refused in one line before any work
(issue 24, rows 9, 10, 15, 18): prompt lengths past the model's positions, a shape larger than
memory, an eval baseline that does not exist, a misspelled or mis-typed latency option."""

import pytest

from slimbench.bench.cli import main
from slimbench.compress import shapes
from slimbench.compress.loader import load_artifact
from slimbench.compress.shapes import ShapeSpec, meta_parameters
from slimbench.errors import UsageError

SUITE = ("name: t\nvariants:\n  a: {model: 'MODEL'}\ndevices: [cpu]\nthreads: 1\n"
         "latency: LATENCY\ntasks: []\n")
KNOWN = ("batches, decode_contexts, generate_batches, generate_prompt, min_seconds, "
         "new_tokens, prefill, repeats")


def _run(tmp_path, capsys, latency: str, *overrides: str, model: str = "reference"):
    """``slimbench run`` on a one-variant suite: (exit code, stderr); nothing may be written."""
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE.replace("MODEL", model).replace("LATENCY", latency))
    rc = main(["run", str(suite), "--out", str(tmp_path / "R"), *overrides])
    assert not (tmp_path / "R").exists() and not (tmp_path / ".artifacts").exists()
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("latency,overrides,model,message", [
    ("{prefill: [100000]}", (), "reference",
     "variant a: reference: prefill needs 100000 positions (length 100000), the model has 256"),
    ("{prefill: [8]}", ("latency.decode_contexts=[250]",), "reference",
     "variant a: reference: decode needs 282 positions (length 250 + 32 new tokens), the "
     "model has 256"),
    ("{prefill: [], decode_contexts: [], generate_prompt: 100}", (),
     "shape:gpt2:n_layer=1,n_positions=64",
     "variant a: shape:gpt2:n_layer=1,n_positions=64: generate needs 132 positions (length "
     "100 + 32 new tokens), the model has 64"),
])
def test_lengths_past_the_models_positions_refused_at_suite_load(tmp_path, capsys, latency,
                                                                 overrides, model, message):
    rc, err = _run(tmp_path, capsys, latency, *overrides, model=model)
    assert rc == 2 and err == f"slimbench: error: {tmp_path / 's.yaml'}" + (
        f" with {' '.join(overrides)}" if overrides else "") + f": {message}\n"


def test_lengths_past_the_models_positions_refused_at_cell_start():
    """Where the suite could not know the positions (a hub id), the cell refuses before it
    measures anything, with compare's message, instead of an IndexError from the model."""
    from slimbench.bench.measure.cell import latency_cell

    with pytest.raises(UsageError) as err:
        latency_cell("reference", config={"prefill": [8, 300], "decode_contexts": [],
                                          "generate_prompt": 0, "min_seconds": 0})
    assert str(err.value) == ("reference: prefill needs 300 positions (length 300), the model "
                              "has 256")


def test_shape_larger_than_memory_refused_before_allocating(capsys):
    spec = "shape:gpt2:n_layer=1000,n_embd=12000"  # 1.7 T parameters, 6.9 TB as float32
    assert main(["inspect", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"slimbench: error: {spec} has 1,728,771,396,000 parameters: about "
                          "6,915.1 GB as float32, more than the ")
    assert err.endswith(" GB of memory available here; choose a smaller shape\n")
    assert err.count("\n") == 1


def test_shape_checked_against_available_memory(monkeypatch):
    spec = ShapeSpec.parse("shape:gpt2:n_layer=1")
    params = meta_parameters(spec)
    monkeypatch.setattr(shapes, "available_memory", lambda: params * 4 - 1)
    with pytest.raises(UsageError) as err:
        load_artifact(spec.label)
    assert str(err.value) == (f"shape:gpt2:n_layer=1 has {params:,} parameters: about "
                              f"{params * 4 / 1e9:,.1f} GB as float32, more than the "
                              f"{(params * 4 - 1) / 1e9:,.1f} GB of memory available here; "
                              "choose a smaller shape")
    monkeypatch.setattr(shapes, "available_memory", lambda: params * 4)  # just fits
    assert load_artifact(spec.label).info.parameters == params


@pytest.mark.parametrize("baseline,message", [
    ("MISSING", "--baseline: model path 'MISSING' does not exist"),
    ("shape:gpt2", "baseline shape:gpt2 has random weights"),
])
def test_eval_baseline_checked_before_any_evaluation(tmp_path, monkeypatch, capsys, baseline,
                                                     message):
    import slimbench.compress.loader as loader
    import slimbench.tasks.generation as generation

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation ran before --baseline was checked")

    monkeypatch.setattr(loader, "load_artifact", no_work)
    monkeypatch.setattr(generation, "run_entry", no_work)
    missing = str(tmp_path / "nope")
    rc = main(["eval", "reference", "--task", "perplexity",
               "--baseline", baseline.replace("MISSING", missing)])
    assert rc == 2
    assert capsys.readouterr().err == ("slimbench: error: "
                                       f"{message.replace('MISSING', missing)}\n")


@pytest.mark.parametrize("latency,message", [
    ("{prefil: [8]}",
     f"unknown latency option 'prefil'; did you mean 'prefill'? (known: {KNOWN})"),
    ("{warmups: 3}", f"unknown latency option 'warmups' (known: {KNOWN})"),
    # YAML 1.1 reads 1e9 (no dot) as text
    ("{prefill: [8], repeats: 1e9}",
     "latency.repeats must be an integer, got '1e9' (write 1000000000)"),
    ("{prefill: [1e3]}", "latency.prefill must be integers, got ['1e3'] (write 1000)"),
])
def test_latency_option_mistakes_one_line(tmp_path, capsys, latency, message):
    rc, err = _run(tmp_path, capsys, latency)
    assert rc == 2 and err == f"slimbench: error: {tmp_path / 's.yaml'}: {message}\n"


def test_validate_a_device_is_not_a_regular_file(capsys):
    assert main(["validate", "/dev/null"]) == 2
    assert capsys.readouterr().err == ("slimbench: error: result file /dev/null is not a "
                                       "regular file\n")


def test_model_folder_without_tokenizer_says_so(tmp_path, capsys, tiny_model):
    """Not the message about random-weight shapes: the folder and the files it lacks."""
    from slimbench.bench.measure.cell import suite_cell

    folder = tmp_path / "notok"
    tiny_model.save_pretrained(folder)  # weights and config.json, no tokenizer files
    capsys.readouterr()  # transformers' progress bar for the save
    message = (f"{folder}: quality tasks need a tokenizer, and the folder {folder} holds none "
               "of tokenizer.json, tokenizer_config.json, vocab.json, tokenizer.model: copy "
               "the tokenizer files of the model it came from beside its weights")
    assert main(["eval", str(folder), "--task", "perplexity"]) == 2
    assert capsys.readouterr().err == f"slimbench: error: {message}\n"
    with pytest.raises(UsageError) as err:  # a suite cell: the same, before any task runs
        suite_cell(str(folder), "cpu", 1, {"prefill": [], "decode_contexts": [],
                                           "generate_prompt": 0}, ["perplexity"], None, True)
    assert str(err.value) == message

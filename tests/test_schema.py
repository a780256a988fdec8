"""The results schema: every file slimbench writes validates; a wrong type, an unknown field or
another schema version is one line naming the file and the field (exit 2); the committed JSON
Schema is the one the types generate."""

import copy
import json
import shutil
from pathlib import Path

import pytest

from slimbench.bench.cli import main
from slimbench.bench.orchestrate.runner import run_suite
from slimbench.bench.orchestrate.suite import load_suite
from slimbench.schema import SCHEMA_VERSION, CellResult, load_file, schema_text

ROOT = Path(__file__).parent.parent
SUITE = """
name: schema
variants:
  base: {model: reference}
devices: [cpu]
threads: 1
latency: {prefill: [8], decode_contexts: [8], new_tokens: 2, generate_prompt: 8, repeats: 1,
          min_seconds: 0, batches: [2]}
tasks: [perplexity, method_name]
task_limit: 2
perplexity_limit: 2
timeout: 300
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small suite run with its report: what `slimbench run` writes."""
    root = tmp_path_factory.mktemp("schema")
    (root / "s.yaml").write_text(SUITE)
    run = root / "run"
    run_suite(load_suite(root / "s.yaml"), run, say=lambda _: None, show_progress=False)
    assert main(["report", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    """What `slimbench eval --out` writes, with fidelity against a baseline."""
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    assert main(["eval", "reference", "--task", "method_name", "--task", "perplexity",
                 "--limit", "2", "--resamples", "10", "--threads", "1", "--baseline",
                 "reference", "--out", str(out)]) == 0
    return out


def validate(capsys, path):
    rc = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow  # runs a suite / an eval on the embedded reference
def test_every_file_a_run_writes_validates(capsys, run_dir):
    rc, out, err = validate(capsys, run_dir)
    assert rc == 0 and err == ""
    assert out == f"valid: {run_dir}: 1 cell result, 1 results file (results schema " \
                  f"version {SCHEMA_VERSION})\n"
    for path in [*sorted((run_dir / "cells").glob("*.json")), run_dir / "results.json"]:
        rc, out, _ = validate(capsys, path)
        assert rc == 0 and out.startswith(f"valid: {path}: ")
    cell = load_file(run_dir / "cells" / "base--cpu.json")
    assert isinstance(cell, CellResult) and cell.status == "ok"
    assert cell.artifact.weights_sha256 and cell.cell.content_key
    assert cell.quality["method_name"].examples_file == "base--cpu.examples.jsonl"
    assert [s.tag for s in cell.latency.scenarios] == ["8", "8", "8", "8x2"]
    rows = {r["metric"] for r in json.loads((run_dir / "results.json").read_text())["rows"]}
    # the row names the committed baseline gates on, and every memory field that was measured
    assert {"prefill_ms@8", "prefill_ms@8x2", "decode_ms_per_token@8", "ttft_ms@8", "tpot_ms@8",
            "tokens_per_s@8", "peak_rss_bytes", "rss_bytes", "model_bytes_on_disk",
            "parameters", "nonzero_parameters", "perplexity.perplexity",
            "method_name.f1"} <= rows


@pytest.mark.slow  # runs a suite / an eval on the embedded reference
def test_the_eval_out_file_validates(capsys, eval_file):
    rc, out, _ = validate(capsys, eval_file)
    assert rc == 0 and out == f"valid: {eval_file}: 1 eval result (results schema version " \
                              f"{SCHEMA_VERSION})\n"
    data = json.loads(eval_file.read_text())
    assert data["document"] == "eval" and data["schema_version"] == SCHEMA_VERSION
    assert data["fidelity"]["metrics"]["top1_agreement"]["value"] == 1.0
    assert data["tasks"]["method_name"]["examples_file"] == "eval.examples.jsonl"


def _bad_copy(tmp_path, source: Path, change) -> Path:
    data = json.loads(source.read_text())
    change(data)
    path = tmp_path / source.name
    path.write_text(json.dumps(data))
    for examples in source.parent.glob(f"{source.stem}.examples.jsonl"):
        shutil.copy(examples, tmp_path / examples.name)
    return path


def _set(*keys, value):
    def change(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value
    return change


@pytest.mark.slow  # runs a suite / an eval on the embedded reference
@pytest.mark.parametrize("keys,value,message", [
    (("latency", "scenarios", 1, "measurements", 0, "median"), "1.0",
     "latency.scenarios[1].measurements[0].median must be a finite number, got '1.0'"),
    (("latency", "scenarios", 0, "measurements", 0, "ci95"), [1.0],
     "latency.scenarios[0].measurements[0].ci95 must be a list of 2 (a finite number, a finite "
     "number) or null, got [1.0]"),
    (("quality", "perplexity", "n"), 2.5, "quality.perplexity.n must be an integer, got 2.5"),
    (("status",), "done", "status must be one of 'ok', 'failed', 'skipped', got 'done'"),
    (("memory", "peak_rss_bytes"), True, "memory.peak_rss_bytes must be an integer or null, "
                                         "got True"),
    (("latency", "scenarios", 0, "speed"), 3, "latency.scenarios[0].speed is not a field of "
                                              "Scenario"),
    (("quality", "method_name", "examples_file"), "gone.jsonl",
     "quality.method_name.examples_file must name a file beside it, got 'gone.jsonl'"),
])
def test_a_changed_field_is_one_line_naming_file_and_field(capsys, tmp_path, run_dir, keys,
                                                           value, message):
    bad = _bad_copy(tmp_path, run_dir / "cells" / "base--cpu.json", _set(*keys, value=value))
    rc, out, err = validate(capsys, bad)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"slimbench: error: {bad}: ") and message in err


@pytest.mark.slow  # runs a suite / an eval on the embedded reference
def test_a_missing_field_and_a_bad_row_are_named(capsys, tmp_path, run_dir, eval_file):
    bad = _bad_copy(tmp_path, eval_file, lambda d: d["tasks"]["perplexity"].pop("metric"))
    rc, _, err = validate(capsys, bad)
    assert rc == 2 and "tasks.perplexity.metric is missing (it must be text)" in err
    bad = _bad_copy(tmp_path, run_dir / "results.json", _set("rows", 3, "value", value="47"))
    rc, _, err = validate(capsys, bad)
    assert rc == 2 and f"{bad}: rows[3].value must be a finite number or null, got '47'" in err
    # in a run directory, the first bad file is named
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cell = run / "cells" / "base--cpu.json"
    cell.write_text(cell.read_text().replace('"status": "ok"', '"status": "maybe"'))
    rc, _, err = validate(capsys, run)
    assert rc == 2 and f"{cell}: status must be one of" in err


@pytest.mark.slow  # runs a suite / an eval on the embedded reference
@pytest.mark.parametrize("name", ["cell", "eval", "results"])
def test_another_schema_version_says_so(capsys, tmp_path, run_dir, eval_file, name):
    source = {"cell": run_dir / "cells" / "base--cpu.json", "eval": eval_file,
              "results": run_dir / "results.json"}[name]
    bad = _bad_copy(tmp_path, source, _set("schema_version", value=99))
    rc, _, err = validate(capsys, bad)
    assert rc == 2 and err == (f"slimbench: error: {bad}: schema_version 99; this slimbench "
                               f"reads schema version {SCHEMA_VERSION}\n")
    with pytest.raises(Exception, match="schema_version 99"):
        load_file(bad)


@pytest.mark.slow  # runs a suite / an eval on the embedded reference
def test_files_from_before_the_schema(capsys, tmp_path, run_dir):
    # a results file from before schema_version (the format results files had then): its
    # rows format is version 1's
    legacy = json.loads((run_dir / "results.json").read_text())
    for key in ("schema_version", "document", "environments"):
        legacy.pop(key)
    baseline = tmp_path / "legacy.json"
    baseline.write_text(json.dumps(legacy))
    rc, out, _ = validate(capsys, baseline)
    assert rc == 0 and "1 results file" in out
    # a cell written before the schema cannot be read as one: it says what it lacks
    old = _bad_copy(tmp_path, run_dir / "cells" / "base--cpu.json",
                    lambda d: d.pop("schema_version"))
    rc, _, err = validate(capsys, old)
    assert rc == 2 and "no schema_version" in err and f"schema version {SCHEMA_VERSION}" in err


@pytest.mark.slow  # runs a suite / an eval on the embedded reference
def test_typed_round_trip(run_dir):
    data = json.loads((run_dir / "cells" / "base--cpu.json").read_text())
    cell = CellResult.from_dict(copy.deepcopy(data))
    assert json.loads(json.dumps(cell.to_dict())) == data


def test_a_hand_built_cell_round_trips_and_a_wrong_type_is_named(capsys, tmp_path):
    from slimbench.schema import CellInfo, Latency, Measurement, Memory, Scenario

    decode = Measurement("decode_ms_per_token", "ms", False, 10.0, (9.9, 10.1), n=8, cv=0.01)
    cell = CellResult(CellInfo("a--cpu", "a", "reference", [], "cpu", backend="torch"), "ok",
                      latency=Latency({}, [Scenario("decode", "128", {"context": 128}, [decode])]),
                      memory=Memory(peak_rss_bytes=1 << 30))
    path = tmp_path / "a--cpu.json"
    path.write_text(json.dumps(cell.to_dict()))
    assert CellResult.from_dict(json.loads(path.read_text())) == cell
    assert validate(capsys, path)[0] == 0
    data = cell.to_dict()
    data["latency"]["scenarios"][0]["measurements"][0]["median"] = "10.0"
    path.write_text(json.dumps(data))
    rc, _, err = validate(capsys, path)
    assert rc == 2 and err == (f"slimbench: error: {path}: latency.scenarios[0].measurements[0]."
                               "median must be a finite number, got '10.0'\n")


def test_committed_json_schema_is_the_generated_one():
    committed = (ROOT / "slimbench" / "schema" / "results.schema.json").read_text()
    assert committed == schema_text(), "regenerate: python -m slimbench.schema > " \
                                       "slimbench/schema/results.schema.json"
    schema = json.loads(committed)
    cell = schema["$defs"]["CellResult"]
    assert cell["properties"]["schema_version"]["type"] == "integer"
    assert schema["$defs"]["Measurement"]["properties"]["median"]["type"] == "number"
    assert set(schema["$defs"]["Memory"]["properties"]) >= {"peak_rss_bytes", "rss_bytes",
                                                            "cuda_max_reserved_bytes"}

"""Suite files, the runner (isolation, resume, skipped CUDA cells), tables, report and gate."""

import json
from pathlib import Path

import pytest
import torch

from slimbench.bench.cli import main
from slimbench.bench.orchestrate.runner import run_suite
from slimbench.bench.orchestrate.suite import load_suite
from slimbench.errors import UsageError
from slimbench.reports.table import load_rows

SUITE = """
name: t
variants:
  base: {model: reference}
  onnx: {model: reference, recipe: [export_onnx]}
  victim: {model: "shape:gpt2:n_layer=1,n_embd=32,n_head=2,n_positions=64"}
devices: [cpu, cuda]
threads: 1
latency: {prefill: [16], decode_contexts: [16], new_tokens: 4, generate_prompt: 8, repeats: 2,
          min_seconds: 0}
tasks: [perplexity, method_name]
task_limit: 3
perplexity_limit: 4
timeout: 300
"""
TARGET = "isolation_cells:suite_cell_or_die"


@pytest.fixture(autouse=True)
def _cells_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def test_suite_validation_and_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    suite = load_suite(path, ["threads=2", "latency.repeats=3"])
    assert suite.threads == 2 and suite.latency["repeats"] == 3
    assert [v.quality for v in suite.variants] == [True, True, False]
    assert suite.variants[1].recipe == (("export_onnx", {}),)
    with pytest.raises(UsageError, match="unknown suite key 'thread'"):
        load_suite(path, ["thread=2"])
    path.write_text(SUITE.replace("recipe: [export_onnx]", "recipe: [export_onx]"))
    with pytest.raises(UsageError, match="variant onnx: .*did you mean 'export_onnx'"):
        load_suite(path)
    path.write_text(SUITE.replace("method_name]", "method_nam]"))
    with pytest.raises(UsageError, match="method_nam"):
        load_suite(path)
    path.write_text(SUITE.replace("[cpu, cuda]", "[cpu, tpu]"))
    with pytest.raises(UsageError, match="device 'tpu'"):
        load_suite(path)
    path.write_text(SUITE)
    for override, message in (("threads=abc", "with threads=abc: threads must be an integer"),
                              ("task_limit=2.5", "task_limit must be an integer, got 2.5"),
                              ("devices=cpu", "devices must be a list of names"),
                              ("tasks=perplexity", "tasks must be a list of names"),
                              ("latency=3", "latency must be a mapping"),
                              ("latency.repeats=abc", "latency.repeats must be an integer"),
                              ("latency.prefill=5", "latency.prefill must be a list")):
        with pytest.raises(UsageError, match=message):
            load_suite(path, [override])


@pytest.mark.slow
def test_run_isolates_cells_resumes_and_reports(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    suite = load_suite(path)
    run = tmp_path / "runs" / "a"
    results = run_suite(suite, run, say=lambda _: None, cell_target=TARGET,
                        show_progress=False)
    status = {r.cell.id: r.status for r in results}
    assert status["base--cpu"] == status["onnx--cpu"] == "ok"
    assert status["victim--cpu"] == "failed"  # killed, and the others are all there
    victim = json.loads((run / "cells" / "victim--cpu.json").read_text())
    assert victim["reason"].startswith("killed by SIGKILL")
    if not torch.cuda.is_available():
        assert status["base--cuda"] == "skipped"
    onnx = json.loads((run / "cells" / "onnx--cpu.json").read_text())
    assert onnx["cell"]["backend"] == "onnxruntime" and onnx["quality"]["perplexity"]["n"] == 4
    assert (run / "cells" / "onnx--cpu.examples.jsonl").is_file()
    # the same artifact scored on both backends: fp32 ONNX keeps the torch perplexity (each
    # token's NLL moves <= 2 max|dlogit|, ~1e-5 at most for fp32 exports)
    base = json.loads((run / "cells" / "base--cpu.json").read_text())
    assert onnx["quality"]["perplexity"]["value"] == pytest.approx(
        base["quality"]["perplexity"]["value"], rel=1e-4)

    before = (run / "cells" / "base--cpu.json").read_bytes()
    again = run_suite(suite, run, resume=True, say=lambda _: None, cell_target=TARGET,
                      show_progress=False)
    assert (run / "cells" / "base--cpu.json").read_bytes() == before  # finished: skipped
    assert [r.status for r in again] == [r.status for r in results]
    with pytest.raises(UsageError, match="already exists"):
        run_suite(suite, run, cell_target=TARGET)
    with pytest.raises(UsageError, match="started with a different suite"):
        run_suite(load_suite(path, ["threads=2"]), run, resume=True, cell_target=TARGET)

    assert main(["report", str(run)]) == 0
    rows = load_rows(run)
    assert {r.variant for r in rows} == {"base", "onnx"}
    assert (run / "results.csv").read_text().startswith("cell,variant,backend,device,kind")
    html = (run / "report.html").read_text()
    assert '<table id="summary">' in html and "<svg" in html
    assert "<script" not in html and "<link" not in html and 'src="http' not in html
    assert "victim--cpu: failed: killed by SIGKILL" in html
    assert main(["gate", "--baseline", str(run), "--candidate", str(run)]) == 0


def test_committed_suites_are_valid():
    folder = Path(__file__).parent.parent / "bench" / "suites"
    # search-space-*.yaml are `slimbench search`'s spaces, not suites (test_search_space.py)
    suites = sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("search-space-"))
    assert suites
    for path in suites:
        suite = load_suite(path)
        assert suite.baseline_variant in [v.name for v in suite.variants]


def test_shared_recipe_prefixes_are_built_once(tiny_dir, tmp_path):
    from slimbench.compress.cache import ArtifactCache

    said = []
    cache = ArtifactCache(tmp_path / "cache", said.append)
    onnx = (("export_onnx", {}),)
    first = cache.build(str(tiny_dir), onnx, "onnx")
    second = cache.build(str(tiny_dir), onnx + (("ort_dynamic_int8", {}),), "int8")
    assert len(said) == 2 and "ort_dynamic_int8" in said[1]  # export ran once
    manifest = json.loads((Path(second) / "manifest.json").read_text())
    assert manifest["parent"]["spec"] == first
    again = ArtifactCache(tmp_path / "cache", said.append)  # a later run: verified, reused
    assert again.build(str(tiny_dir), onnx + (("ort_dynamic_int8", {}),)) == second
    assert len(said) == 2
    assert sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").iterdir()
                  if not p.name.startswith(".")) == ["export_onnx", "ort_dynamic_int8"]

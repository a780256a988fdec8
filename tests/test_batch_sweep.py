"""The generate batch sweep (``latency.generate_batches``): one generate scenario per batch on
both runtimes, its figures' identity, batched greedy tokens equal to batch 1's, the config's
refusals, and the report's tokens/s-vs-batch chart and bandwidth-floor columns.

Both runtimes run the tiny random GPT-2 (64 positions): the torch model and its ONNX export.
Timing values are never compared with a bound, only with each other by identity.
"""

import json
import re

import numpy as np
import pytest

from slimbench.bench.measure.cell import LatencyConfig, measure_latency
from slimbench.bench.measure.scenarios import generate_sweep, prompt_tokens, timed_generation
from slimbench.bench.runtimes import make_runtime
from slimbench.compress.loader import load_artifact
from slimbench.compress.steps import run_step
from slimbench.errors import UsageError

PROMPT, NEW = 8, 4


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tiny_model, ref_tokenizer):
    """{backend: (loaded artifact, runtime)}: the tiny model as torch and as ONNX."""
    tiny = tmp_path_factory.mktemp("sweep") / "tiny"
    tiny_model.save_pretrained(tiny)
    ref_tokenizer.save_pretrained(tiny)
    onnx_dir = tiny.parent / "tiny-onnx"
    run_step("export_onnx", {}, str(tiny), onnx_dir)
    out = {}
    for d in (tiny, onnx_dir):
        art = load_artifact(str(d))
        rt = make_runtime(art, threads=1)
        out[rt.backend] = (art, rt)
    return out


BACKENDS = ["torch", "onnxruntime"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sweep_has_one_scenario_per_batch(loaded, backend):
    rt = loaded[backend][1]
    sweep = generate_sweep(rt, PROMPT, (1, 4, 8, 16), NEW, repeats=1, min_seconds=0.0)
    assert [s.tag for s in sweep] == ["8", "8x4", "8x8", "8x16"]  # prefill's naming: 128x8
    for s, batch in zip(sweep, (1, 4, 8, 16), strict=True):
        assert s.scenario == "generate"
        assert s.params == {"prompt_len": PROMPT, "new_tokens": NEW, "batch": batch,
                            "repeats": 1}
        ttft, tpot, rate = (s.measurement(n) for n in ("ttft_ms", "tpot_ms", "tokens_per_s"))
        assert (ttft.unit, tpot.unit, rate.unit) == ("ms", "ms", "tok/s")
        assert rate.higher_is_better and not ttft.higher_is_better
        assert ttft.n == tpot.n == rate.n == 1
        # one round: the medians are its samples, so the definition holds on them
        total_s = (ttft.median + (NEW - 1) * tpot.median) / 1e3
        assert rate.median == pytest.approx(batch * NEW / total_s, rel=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tokens_per_s_identity_holds_per_round(loaded, backend):
    rt = loaded[backend][1]
    run = timed_generation(rt, prompt_tokens(rt.vocab_size, PROMPT, 4), NEW, repeats=3, warmup=1)
    assert len(run.ttft) == len(run.tpot) == len(run.rate) == 3
    for ttft, tpot, rate in zip(run.ttft, run.tpot, run.rate, strict=True):
        assert ttft > 0 and tpot > 0
        assert rate == pytest.approx(4 * NEW / (ttft + (NEW - 1) * tpot), rel=1e-9)
    assert run.tokens.shape == (4, NEW) and run.tokens.dtype == np.int64


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_greedy_tokens_equal_batch_one(loaded, backend):
    rt = loaded[backend][1]
    prompts = prompt_tokens(rt.vocab_size, PROMPT, 16)
    # seeded prompts are nested: row 0 of every batch is the batch-1 prompt
    assert (prompts[:1] == prompt_tokens(rt.vocab_size, PROMPT, 1)).all()
    batched = timed_generation(rt, prompts, NEW, repeats=1, warmup=0).tokens
    for i in range(16):
        alone = timed_generation(rt, prompts[i:i + 1], NEW, repeats=1, warmup=0).tokens
        assert batched[i].tolist() == alone[0].tolist(), f"row {i}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_runs_the_sweep_after_the_generate_scenario(loaded, backend):
    """Batch 1 is the generate scenario itself, measured once; the rows name each batch."""
    from slimbench.reports.table import rows_from_cell
    from slimbench.schema import CellInfo, CellResult

    art, rt = loaded[backend]
    cfg = LatencyConfig(prefill=(), decode_contexts=(), new_tokens=NEW, generate_prompt=PROMPT,
                        generate_batches=(4, 1, 2), repeats=1, min_seconds=0.0)
    fields = measure_latency(rt, art, cfg, "cpu")
    assert [s.tag for s in fields.latency.scenarios] == ["8", "8x4", "8x2"]
    assert fields.latency.config["generate_batches"] == (4, 1, 2)
    cell = fields.into(CellResult(CellInfo("t--cpu", "t", "t", [], "cpu", backend), "ok"))
    metrics = [r.metric for r in rows_from_cell(cell.to_dict())]
    for tag in ("8", "8x4", "8x2"):
        assert {f"ttft_ms@{tag}", f"tpot_ms@{tag}", f"tokens_per_s@{tag}"} <= set(metrics)
    assert len(metrics) == len(set(metrics))


@pytest.mark.parametrize("bad, message", [
    ({"generate_batches": 4}, "latency.generate_batches must be a list"),
    ({"generate_batches": [4, "8"]}, "latency.generate_batches must be integers"),
    ({"generate_batches": [True]}, "latency.generate_batches must be integers"),
    ({"generate_batches": [0, 4]}, "generate_batches values must be >= 1"),
    ({"generate_batches": [4, 4]}, "must not repeat a batch size"),
    ({"generate_batches": [4], "generate_prompt": 0}, "needs latency.generate_prompt > 0"),
])
def test_config_refuses_bad_generate_batches(bad, message):
    with pytest.raises(UsageError, match=message):
        LatencyConfig(**bad)


def test_suite_names_the_file_for_a_bad_sweep():
    from slimbench.bench.orchestrate.suite import parse_suite

    suite = {"variants": {"base": {"model": "reference"}}, "devices": ["cpu"],
             "latency": {"generate_prompt": 8, "generate_batches": [1, 4]}, "tasks": []}
    assert parse_suite(suite, "s.yaml").latency["generate_batches"] == [1, 4]
    with pytest.raises(UsageError, match=r"^s\.yaml: latency\.generate_batches must be"):
        parse_suite(suite | {"latency": {"generate_batches": "4"}}, "s.yaml")
    assert LatencyConfig().generate_batches == ()  # default: no sweep


# --- the report -----------------------------------------------------------------------------

def _measurement(name, median, unit="ms", higher=False):
    return {"name": name, "unit": unit, "higher_is_better": higher, "median": median,
            "ci95": [median * 0.99, median * 1.01], "n": 5, "cv": 0.01}


def _cell(variant, backend, decode_ms, rates, device="cpu", bytes_on_disk=10_000_000,
          dtype="float32", quant=None):
    scenarios = [{"scenario": "decode", "tag": "128", "params": {},
                  "measurements": [_measurement("decode_ms_per_token", decode_ms)]}]
    for batch, rate in rates.items():
        tag = "64" + (f"x{batch}" if batch > 1 else "")
        scenarios.append({
            "scenario": "generate", "tag": tag,
            "params": {"prompt_len": 64, "new_tokens": 16, "batch": batch, "repeats": 5},
            "measurements": [_measurement("ttft_ms", 10.0), _measurement("tpot_ms", 5.0),
                             _measurement("tokens_per_s", rate, "tok/s", True)]})
    return {"schema_version": 1, "document": "cell",
            "cell": {"id": f"{variant}--{device}", "variant": variant, "model": "reference",
                     "recipe": [] if variant == "baseline" else ["x"], "device": device,
                     "backend": backend},
            "status": "ok",
            "artifact": {"spec": variant, "kind": "local", "path": None,
                         "random_weights": False, "model_type": "gpt2",
                         "parameters": 2_500_000, "nonzero_parameters": 2_500_000,
                         "bytes_on_disk": bytes_on_disk, "dtype": dtype, "device": device,
                         "weights_sha256": None, "manifest": {"quantization": quant or {}}},
            "latency": {"config": {}, "scenarios": scenarios},
            "memory": {"model_bytes_on_disk": bytes_on_disk, "parameters": 2_500_000},
            "environment": {"memory_bandwidth_bytes_per_s": 10e9},
            "quality": {"perplexity": {
                "task": "perplexity", "version": "1", "metric": "perplexity", "value": 40.0,
                "ci95": [39.0, 41.0], "higher_is_better": False, "n": 50, "seconds": 1.0,
                "metrics": {"perplexity": {"value": 40.0, "ci95": [39.0, 41.0],
                                           "higher_is_better": False}}}}}


def test_report_draws_the_sweep_and_the_bandwidth_floor(tmp_path):
    from slimbench.reports.output import write_report

    cells = [
        _cell("baseline", "torch", 4.0, {1: 200.0, 4: 700.0, 8: 1200.0}),
        # a new weight format: ONNX int4, its bytes from the files (1 MB: floor 0.1 ms)
        _cell("ort-int4", "onnxruntime", 0.5, {1: 900.0, 4: 3000.0}, bytes_on_disk=1_000_000,
              quant={"block_matmuls": 24, "block_matmuls_int4": 24}),
        # no file size: the floor from parameters x 2 bytes (float16), marked *
        _cell("fp16", "torch", 2.0, {1: 300.0}, bytes_on_disk=None, dtype="float16"),
        _cell("baseline", "torch", 1.0, {1: 500.0, 16: 4000.0}, device="cuda"),
    ]
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    for i, cell in enumerate(cells):
        (run / "cells" / f"{i}.json").write_text(json.dumps(cell))
    out = write_report(run, "baseline")
    html = out.html.read_text()
    # (a) the chart, with every line's label, after the two Pareto charts
    assert html.count("<svg") == 3
    assert "generate tokens/s vs batch (prompt 64, 16 new tokens" in html
    # (b) the floor beside decode: 10 MB / 10 GB/s = 1 ms, 25% of a 4 ms step; int4 1 MB:
    # 0.1 ms, 20% of 0.5 ms; fp16 2.5M x 2 B = 5 MB: 0.5 ms*, 25%; CUDA: none
    head = html[html.index('<table id="summary">'):]
    head = head[:head.index("</thead>")]
    assert "<th>decode_ms_per_token@128</th><th>floor ms</th><th>% of floor@128</th>" in head
    body = html[html.index('<table id="summary">'):]
    body = body[body.index("<tbody>"):body.index("</table>")]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)
            for r in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
    by_variant = {(r[0], r[2]): r[3:6] for r in rows}
    assert by_variant[("baseline", "cpu")] == ["4", "1", "25%"]
    assert by_variant[("ort-int4", "cpu")][1:] == ["0.1", "20%"]
    assert by_variant[("fp16", "cpu")][1:] == ["0.5*", "25%"]
    assert by_variant[("baseline", "cuda")] == ["1", "—", "—"]
    assert 'id="floor-note"' in html and "parameters × bytes per weight" in html
    # (c) the int4 ONNX variant is a point of both Pareto charts (matplotlib keeps each
    # label's text in a comment) and a line of the sweep; audited like int8
    assert html.count("<!-- ort-int4 (onnxruntime, cpu) -->") == 3
    assert "int4 block MatMuls 24/24" in html
    summary = (run / "summary.csv").read_text()
    assert "tokens_per_s@64x4" in summary and "tokens_per_s@64x16" in summary


def test_report_without_a_sweep_has_no_sweep_chart(tmp_path):
    from slimbench.reports.output import write_report

    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    (run / "cells" / "0.json").write_text(json.dumps(_cell("baseline", "torch", 4.0,
                                                           {1: 200.0})))
    html = write_report(run, "baseline").html.read_text()
    assert "tokens/s vs batch" not in html and html.count("<svg") == 2


def test_the_frontier_suite_sweeps_batches_and_times_int4():
    from pathlib import Path

    from slimbench.bench.orchestrate.suite import load_suite

    suite = load_suite(Path(__file__).parent.parent / "bench" / "suites" / "frontier.yaml")
    assert list(suite.latency["generate_batches"]) == [1, 4, 8, 16]
    recipes = {v.name: [s for s, _ in v.recipe] for v in suite.variants}
    assert recipes["gpt2-ort-int4"] == ["export_onnx", "ort_weight_int4"]
    assert recipes["ort-int4-gptq"] == ["export_onnx", "ort_weight_int4"]
    fused = {v.name: dict(v.recipe) for v in suite.variants if "fused" in v.name}
    assert sorted(fused) == ["gpt2-fused-ort-int4", "gpt2-fused-ort-int8",
                             "gpt2-fused-ort-static-int8"]
    assert all(r["export_onnx"] == {"attention": "fused"} for r in fused.values())
    assert suite.acceptance["ort-int4-gptq"]["perplexity.perplexity"] == {"non_inferior": 0.05}

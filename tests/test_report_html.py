"""The HTML report: deltas against each model's own baseline, escaping, and what headless
Chromium (Debian's ``chromium``, installed by ``make test``) actually renders."""

import copy
import json
import shutil
import subprocess

import pytest

from slimbench.reports.output import baselines_for, summary_frame, write_report
from slimbench.reports.table import rows_from_cell

EVIL = '<script>document.title="pwned"</script>'


def _cell(variant, model, recipe, decode_ms, ppl=None, device="cpu"):
    decode = {"name": "decode_ms_per_token", "unit": "ms", "higher_is_better": False,
              "median": decode_ms, "ci95": [decode_ms * 0.99, decode_ms * 1.01], "n": 10,
              "cv": 0.01}
    cell = {"schema_version": 1, "document": "cell",
            "cell": {"id": f"{variant}--{device}", "variant": variant, "model": model,
                     "recipe": recipe, "device": device, "backend": "torch"},
            "status": "ok",
            "artifact": {"spec": model, "kind": "local", "path": None, "random_weights": False,
                         "model_type": "gpt2", "parameters": 2_615_424,
                         "nonzero_parameters": 2_615_424, "bytes_on_disk": 10_466_744,
                         "dtype": "float32", "device": device, "weights_sha256": None,
                         "manifest": {}},
            "latency": {"config": {}, "scenarios": [{"scenario": "decode", "tag": "128",
                                                     "params": {}, "measurements": [decode]}]},
            "memory": {"model_bytes_on_disk": 10_466_744}, "warnings": [],
            "environment": {"cpu": "test cpu", "threads": 2},
            "quality": {}}
    if ppl is not None:
        cell["quality"]["perplexity"] = {
            "task": "perplexity", "version": "1", "metric": "perplexity", "value": ppl,
            "ci95": [ppl - 1, ppl + 1], "higher_is_better": False, "n": 50, "seconds": 1.0,
            "metrics": {"perplexity": {"value": ppl, "ci95": [ppl - 1, ppl + 1],
                                       "higher_is_better": False}}}
    return cell


def _cells():
    return [_cell("baseline", "reference", [], 5.0, 47.0),
            _cell("int8", "reference", ["torch_dynamic_int8"], 4.0, 48.0),
            _cell("gpt2", "shape:gpt2", [], 60.0),
            _cell("gpt2-int8", "shape:gpt2", ["torch_dynamic_int8"], 30.0),
            _cell(EVIL, "reference", ["prune_unstructured"], 6.0, 50.0),
            {"schema_version": 1, "document": "cell",
             "cell": {"id": "broken--cpu", "variant": "broken", "model": "reference",
                      "recipe": [], "device": "cpu"}, "status": "failed",
             "reason": "killed by SIGKILL <OOM>"}]


def _run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    for i, cell in enumerate(_cells()):
        (run / "cells" / f"{i}.json").write_text(json.dumps(cell))
    return run


def test_each_model_is_compared_with_its_own_baseline():
    cells = _cells()
    baselines = baselines_for(cells, "baseline")
    assert baselines == {"baseline": "baseline", "int8": "baseline", "gpt2": "gpt2",
                         "gpt2-int8": "gpt2", EVIL: "baseline", "broken": "baseline"}
    rows = [r for c in cells for r in rows_from_cell(c)]
    wide = summary_frame(rows, baselines).set_index("variant")
    delta = wide["Δ decode_ms_per_token@128"]
    assert delta["int8"] == pytest.approx(-0.2)        # 4 vs the reference's 5 ms
    assert delta["gpt2-int8"] == pytest.approx(-0.5)   # 30 vs gpt2's 60 ms, not vs 5 ms
    assert delta["gpt2"] == 0 and delta["baseline"] == 0
    # a model without a recipe-less variant gets no delta rather than a meaningless one
    orphan = [c for c in copy.deepcopy(cells) if c["cell"]["variant"] != "gpt2"]
    assert "gpt2-int8" not in baselines_for(orphan, "baseline")


def _chromium():
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)
    if exe is None:
        pytest.fail("headless Chromium is needed for this test: `make test` installs Debian's "
                    "chromium (apt-get install chromium)")
    return exe


def _headless(exe, tmp_path, *args):
    profile = tmp_path / "profile"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    exe = _chromium()
    run = _run_dir(tmp_path)
    html = write_report(run, "baseline").html
    url = html.resolve().as_uri()
    dom = _headless(exe, tmp_path, "--dump-dom", url)
    # the browser parsed the page into the summary table, one row per ok cell
    body = dom[dom.index('<table id="summary">'):]
    body = body[:body.index("</table>")]
    assert body.count("<tr>") == 1 + 5  # header + five ok cells
    assert "gpt2-int8" in body and "(-50.0%)" in body and "(-20.0%)" in body
    assert "<th>floor ms</th>" in body  # beside decode; "—" here: no bandwidth recorded
    # every string escaped: the variant name is text, never a script that ran
    assert "&lt;script&gt;document.title" in dom and "<title>pwned" not in dom
    assert "broken--cpu: failed: killed by SIGKILL &lt;OOM&gt;" in dom
    assert dom.count("<svg") >= 2  # both Pareto charts inline
    # and it draws: a screenshot that is not blank
    shot = tmp_path / "report.png"
    _headless(exe, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", url)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    ink = (pixels[..., :3].mean(axis=-1) < 0.5).mean()  # share of dark pixels: text, lines
    assert ink > 0.005

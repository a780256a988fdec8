"""What ``slimbench search`` writes (``bench/orchestrate/search_outputs.py``): ``search.json``
that ``slimbench validate`` reads, ``frontier.html`` (escaped, rendered by headless Chromium),
and with a winner ``best-recipe.yaml`` / ``best-suite.yaml`` that ``compress --recipe`` and
``run`` accept; with none, no best-* (nor a stale one) and the closest candidates named."""

import dataclasses
import json

import pytest

from slimbench.bench.cli import main
from slimbench.bench.orchestrate.search_outputs import (
    BEST_RECIPE,
    BEST_SUITE,
    MARK,
    write_outputs,
)
from slimbench.compress.recipe import load_recipe
from slimbench.reports.frontier import (
    frontier,
    frontier_html,
    max_bytes,
    min_speedup,
    missed_by,
    quality_ratio,
)
from slimbench.schema import (
    SCHEMA_VERSION,
    Candidate,
    PairedTest,
    Screen,
    SearchResult,
    Speed,
    Step,
    load_file,
)
from tests.test_report_html import _chromium, _headless

EVIL = '<script>document.title="pwned"</script>'
TASKS = ["perplexity", "next_line"]
ACCEPTANCE = {"perplexity.perplexity": {"non_inferior": 0.02},
              "next_line.acc": {"no_significant_loss": 0.02, "mode": "absolute"},
              "decode_ms_per_token": {"speedup_at_least": 1.2}}
# as the search records it (search_budget.py Budget.to_dict): its criteria as acceptance
BUDGET = {"source": f"budget-{EVIL}.yaml", "tasks": TASKS,
          "criteria": {"prefill_ms": {"speedup_at_least": 3.0}} | ACCEPTANCE}


def _screens(ppl: float, acc: float, fail: bool = False, examples: int = 120):
    return [Screen("perplexity", "perplexity", "non_inferior", 0.02,
                   "fail" if fail else "pass", examples, 3 if not fail else 1, 0.05 / 3, ppl,
                   (ppl - 0.005, ppl + 0.005)),
            Screen("next_line", "acc", "no_significant_loss", 0.02, "pass", examples, 3,
                   0.05 / 3, acc, (acc - 0.01, acc + 0.01))]


def _paired(metric: str, status: str = "pass") -> PairedTest:
    delta = 0.3 if status == "pass" else 2.5
    return PairedTest(
        metric=metric, baseline=46.9, candidate=46.9 + delta, delta=delta,
        ci95=(delta - 0.2, delta + 0.2), se=0.1, n=200, resamples=1000, seed=0, status=status,
        why=f"{metric}: +{delta} {'within' if status == 'pass' else 'beyond'} the allowance",
        test="non_inferiority", allowance=0.94, degradation=delta,
        degradation_ci95=(delta - 0.2, delta + 0.2), detectable=0.4, detectable_relative=0.01)


def _candidates() -> list[Candidate]:
    return [
        Candidate("c01", [Step("export_onnx"), Step("ort_dynamic_int8")], "k01", "winner",
                  "confirm", "", bytes_on_disk=3_000_000, parameters=2_615_424,
                  nonzero_parameters=2_615_424, screening=_screens(0.004, 0.005),
                  tune_examples=240, speed=Speed("decode_ms_per_token", 2.1, (2.0, 2.2), 40),
                  confirmation=[_paired("perplexity"), _paired("acc")], seconds=80.0),
        Candidate("c02", [Step("prune_structured", {"ratio": 0.5})], "k02", "rejected",
                  "screen", f"perplexity worse by 31% after 40 examples {EVIL}",
                  bytes_on_disk=5_000_000, screening=_screens(0.31, 0.004, fail=True,
                                                                examples=40),
                  tune_examples=80, seconds=12.0),
        Candidate("c03", [Step("torch_dynamic_int8")], "k03", "dominated", "screen",
                  "c01 is as good on quality and bytes", bytes_on_disk=4_000_000,
                  screening=_screens(0.006, 0.006), tune_examples=240, seconds=30.0),
        Candidate("c04", [Step("export_onnx"), Step("ort_weight_int4", {"block_size": 32})],
                  None, "failed", "build", "ort_weight_int4 raised: <no kernel>", seconds=2.0),
        Candidate("c05", [Step("export_onnx"), Step("ort_static_int8")], None, "not_reached",
                  None, "the time budget ran out"),
        Candidate("c06", [Step("export_onnx"), Step("ort_optimize")], "k06", "screened",
                  "latency", "slower than c01", bytes_on_disk=10_000_000,
                  screening=_screens(-0.001, 0.0), tune_examples=240,
                  speed=Speed("decode_ms_per_token", 1.4, (1.3, 1.5), 40), seconds=60.0),
    ]


def _result(**change) -> SearchResult:
    result = SearchResult(
        model="reference", device="cpu", threads=2, objective="decode", budget=BUDGET,
        space="default-cpu", alpha=0.05, screening_alpha=0.05, candidates=_candidates(),
        tried=5, confirmed=["c01"], winner="c01", closest=[], seconds=600.0,
        environment={"cpu": "test cpu <x>", "threads": 2, "packages": {"torch": "2.13.0"}})
    return dataclasses.replace(result, **change)


def _no_winner() -> SearchResult:
    """The same search where c01 failed its confirmation."""
    cands = _candidates()
    cands[0] = dataclasses.replace(
        cands[0], status="not_confirmed", why="perplexity beyond its allowance on test",
        confirmation=[_paired("perplexity", "fail"), _paired("acc")])
    return _result(candidates=cands, winner=None,
                   closest=["c01 (export_onnx → ort_dynamic_int8): not_confirmed at confirm; "
                            "perplexity +2.5 on 200 test examples vs allowance 0.94", "c02"])


def _write(out, result):
    write_outputs(out, result, ACCEPTANCE, TASKS, "reference", "cpu", 2)


def validate(capsys, path):
    rc = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("baseline_bytes", [None, 1_000_000])
def test_search_json_round_trips_and_validates(tmp_path, capsys, baseline_bytes):
    result = _result(baseline_bytes_on_disk=baseline_bytes)
    _write(tmp_path, result)
    path = tmp_path / "search.json"
    data = json.loads(path.read_text())
    assert data["document"] == "search" and data["schema_version"] == SCHEMA_VERSION
    assert data["baseline_bytes_on_disk"] == baseline_bytes
    assert data["searched_on"] == "tune" and data["confirmed_on"] == "test"
    assert SearchResult.from_dict(data) == result
    assert load_file(path, "search") == result
    rc, out, err = validate(capsys, path)
    assert rc == 0 and err == "" and out == (f"valid: {path}: 1 search result (results schema "
                                             f"version {SCHEMA_VERSION})\n")
    rc, out, _ = validate(capsys, tmp_path)  # the search's folder
    assert rc == 0 and "1 search result" in out


@pytest.mark.parametrize("change,message", [
    (lambda d: d["candidates"][1].__setitem__("status", "maybe"),
     "candidates[1].status must be one of 'failed', 'rejected'"),
    (lambda d: d["candidates"][0]["speed"].__setitem__("speedup", "2.1"),
     "candidates[0].speed.speedup must be a finite number, got '2.1'"),
    (lambda d: d["candidates"][1]["screening"][0].pop("examples"),
     "candidates[1].screening[0].examples is missing (it must be an integer)"),
    (lambda d: d.__setitem__("winner", "c02"),
     "winner must be the one candidate whose status is winner, got 'c02'"),
    (lambda d: d.__setitem__("tried", 6),
     "tried must be 5 (the candidates whose status is not not_reached), got 6"),
    (lambda d: d.__setitem__("closest", ["c99"]),
     "closest must be entries that each start with a candidate's name, got ['c99']"),
    (lambda d: d["candidates"][0]["confirmation"][0].__setitem__("status", "fail"),
     "candidates[0].confirmation must be the passing paired tests on test"),
    (lambda d: d["candidates"][1].__setitem__("why", " "),
     "candidates[1].why must be text saying why the candidate was rejected"),
])
def test_a_corrupted_search_json_is_one_line_naming_the_field(tmp_path, capsys, change,
                                                               message):
    _write(tmp_path, _result())
    path = tmp_path / "search.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    rc, out, err = validate(capsys, path)
    assert rc == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"slimbench: error: {path}: ") and message in err, err


def test_another_schema_version_is_refused(tmp_path, capsys):
    _write(tmp_path, _result())
    path = tmp_path / "search.json"
    path.write_text(path.read_text().replace(f'"schema_version": {SCHEMA_VERSION}',
                                             '"schema_version": 99'))
    rc, _, err = validate(capsys, path)
    assert rc == 2 and "schema_version 99" in err


def test_best_recipe_and_suite_are_what_compress_and_run_read(tmp_path):
    from slimbench.bench.orchestrate.suite import load_suite

    _write(tmp_path, _result())
    assert (tmp_path / BEST_RECIPE).read_text().startswith(MARK)
    recipe = load_recipe(tmp_path / BEST_RECIPE)
    assert recipe.model == "reference"
    assert recipe.steps == [("export_onnx", {}), ("ort_dynamic_int8", {})]
    suite = load_suite(tmp_path / BEST_SUITE)
    variants = {v.name: v for v in suite.variants}
    assert set(variants) == {"baseline", "best"} and suite.baseline_variant == "baseline"
    assert variants["baseline"].model == variants["best"].model == "reference"
    assert not variants["baseline"].recipe
    assert [s for s, _ in variants["best"].recipe] == ["export_onnx", "ort_dynamic_int8"]
    assert suite.acceptance == {"best": ACCEPTANCE}
    assert suite.devices == ("cpu",) and suite.threads == 2 and suite.tasks == tuple(TASKS)


def test_a_recipe_with_parameters_round_trips(tmp_path):
    cands = _candidates()
    steps = [Step("prune_structured", {"ratio": 0.3}), Step("distill", {"steps": 200}),
             Step("torch_dynamic_int8")]
    cands[0] = dataclasses.replace(cands[0], steps=steps)
    _write(tmp_path, _result(candidates=cands))
    assert load_recipe(tmp_path / BEST_RECIPE).steps == [
        ("prune_structured", {"ratio": 0.3}), ("distill", {"steps": 200}),
        ("torch_dynamic_int8", {})]


def test_frontier_page(tmp_path):
    result = _result()
    assert frontier(result) == ["c06", "c01"]  # c06: better quality, c01: faster
    assert quality_ratio(result.candidate("c02")) == pytest.approx(0.31 / 0.02)
    assert min_speedup(result) == 1.2  # the timed metric's (decode), not prefill's
    _write(tmp_path, result)
    html = (tmp_path / "frontier.html").read_text()
    assert "Winner: c01" in html and "c01 ★ winner" in html
    assert '<tr class="winner"' in html
    for name in ("c02", "c03", "c04", "c05"):  # rejected, dominated, failed, not reached
        row = html[html.index(f"<td>{name}</td>") - 60:html.index(f"<td>{name}</td>")]
        assert '<tr class="grey"' in row, name
    assert "6 candidates, 5 tried" in html and "Confirmed on test, in this order: c01" in html
    assert "only at the tune split" in html and "used the test split" in html
    assert "examples no screen looked at" in html and "at most 1." in html
    assert "sequential paired tests" in html and "each at α = 0.05 / 1" in html
    # user text escaped everywhere: the why, the budget, the environment
    assert EVIL not in html and "<script" not in html
    assert "&lt;script&gt;document.title" in html and "&lt;no kernel&gt;" in html
    assert html.count("<svg") == 2  # objective × quality, bytes × quality
    assert "Closest candidates" not in html


# the budget's ceiling on bytes, as the search records it: a ratio of the baseline's bytes
HALF_THE_BYTES = {"ratio_at_most": 0.5}


@pytest.mark.parametrize("metric", ["model_bytes_on_disk", "bytes_on_disk"])  # and its alias
def test_frontier_draws_the_bytes_ceiling_against_the_baseline(metric):
    budget = BUDGET | {"criteria": BUDGET["criteria"] | {metric: HALF_THE_BYTES}}
    result = _result(budget=budget, baseline_bytes_on_disk=1_000_000)
    assert max_bytes(result) == 500_000
    html = frontier_html(result)
    # matplotlib draws text as paths, each preceded by a comment holding the text
    assert "<!-- bytes ceiling 0.5 MB -->" in html and "<!-- baseline -->" in html
    assert html.count("<svg") == 2


def test_a_search_json_without_baseline_bytes_draws_no_ceiling(tmp_path, capsys):
    # an older search.json: it has the ceiling in its budget, not the baseline's bytes
    budget = BUDGET | {"criteria": BUDGET["criteria"] | {"model_bytes_on_disk": HALF_THE_BYTES}}
    _write(tmp_path, _result(budget=budget))
    path = tmp_path / "search.json"
    data = json.loads(path.read_text())
    del data["baseline_bytes_on_disk"]
    path.write_text(json.dumps(data))
    assert validate(capsys, path)[0] == 0
    old = load_file(path, "search")
    assert old.baseline_bytes_on_disk is None and max_bytes(old) is None
    html = frontier_html(old)
    assert "bytes ceiling" not in html and "<!-- baseline -->" not in html
    assert html.count("<svg") == 2
    # baseline bytes but no ceiling in the budget: the baseline alone
    assert max_bytes(_result(baseline_bytes_on_disk=1_000_000)) is None


def test_no_winner_writes_no_best_and_removes_a_stale_one(tmp_path):
    _write(tmp_path, _result())  # an earlier search with a winner
    assert (tmp_path / BEST_RECIPE).is_file() and (tmp_path / BEST_SUITE).is_file()
    mine = tmp_path / "notes.yaml"
    mine.write_text("mine: true\n")
    result = _no_winner()
    _write(tmp_path, result)
    assert not (tmp_path / BEST_RECIPE).exists() and not (tmp_path / BEST_SUITE).exists()
    assert mine.read_text() == "mine: true\n"  # nothing else touched
    assert load_file(tmp_path / "search.json") == result
    html = (tmp_path / "frontier.html").read_text()
    assert "No winner" in html and "Closest candidates" in html
    closest = html[html.index('<table id="closest">'):]
    closest = closest[:closest.index("</table>")]
    assert "c01" in closest and "c02" in closest and "c03" not in closest
    assert "perplexity +2.5 on 200 test examples vs allowance 0.94" in closest  # the search's
    assert "confirmation on test: perplexity: +2.5 beyond the allowance" in closest
    assert "beyond it by 29.50% at the interval&#39;s bad end" in closest  # c02: 31.5% - 2%
    assert missed_by(result.candidate("c02"), result)[0].startswith("perplexity worse by 31%")


def test_best_files_not_written_by_a_search_are_kept(tmp_path):
    # a user's best-recipe.yaml without an earlier search.json, or not written by a search
    (tmp_path / BEST_RECIPE).write_text("model: reference\nsteps: [torch_dynamic_int8]\n")
    _write(tmp_path, _no_winner())
    assert (tmp_path / BEST_RECIPE).is_file()
    (tmp_path / BEST_SUITE).write_text("name: mine\n")
    _write(tmp_path, _no_winner())  # now search.json exists, but the files are not a search's
    assert (tmp_path / BEST_RECIPE).is_file() and (tmp_path / BEST_SUITE).is_file()


def test_an_invalid_result_is_written_and_named(tmp_path):
    from slimbench.errors import UsageError

    with pytest.raises(UsageError, match="tried must be 5"):
        _write(tmp_path, _result(tried=3))
    assert json.loads((tmp_path / "search.json").read_text())["tried"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("winner", [True, False])
def test_frontier_renders_in_headless_chromium(tmp_path, winner):
    exe = _chromium()
    _write(tmp_path, _result() if winner else _no_winner())
    url = (tmp_path / "frontier.html").resolve().as_uri()
    dom = _headless(exe, tmp_path, "--dump-dom", url)
    body = dom[dom.index('<table id="candidates">'):]
    body = body[:body.index("</table>")]
    assert body.count("<tr") == 1 + 6  # header + every candidate
    assert "&lt;script&gt;document.title" in dom and "<title>pwned" not in dom
    assert dom.count("<svg") == 2
    assert ("Closest candidates" in dom) != winner
    # nothing on the console (Chromium logs every console message, errors included, as
    # INFO:CONSOLE): the page runs no script and refers to nothing outside itself
    log = _console(exe, tmp_path, url)
    assert not [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line
                or "net::ERR" in line], log[-2000:]
    shot = tmp_path / "frontier.png"
    _headless(exe, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", url)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    assert (pixels[..., :3].mean(axis=-1) < 0.5).mean() > 0.005


def _console(exe, tmp_path, url) -> str:
    """What the page logged to Chromium's console (its log on stderr)."""
    import subprocess

    profile = tmp_path / "profile-console"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--enable-logging=stderr", "--v=0", "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr

"""`slimbench search` end to end on a reduced space of the embedded reference: a winner
confirmed on examples no screen looked at, a quality-breaker stopped at the first look, an
impossible budget answered with the closest candidates, and a SIGKILLed search resumed without
building, screening or timing anything twice. Plus the pieces without a model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slimbench.bench.cli import main
from slimbench.bench.orchestrate.search import SearchConfig, _dominates, closest
from slimbench.bench.orchestrate.search_budget import parse_budget
from slimbench.bench.orchestrate.search_space import parse_space
from slimbench.bench.orchestrate.search_state import SearchState
from slimbench.compress.recipe import load_recipe
from slimbench.errors import UsageError
from slimbench.schema import load_file
from slimbench.schema.search import Candidate, Screen, Step
from slimbench.tasks.splits import split_of

BUDGET = ("perplexity.perplexity: {non_inferior: 0.02}\n"
          "next_line.acc: {no_significant_loss: 5, mode: absolute}\n")
# torch int8 and ORT int8 keep quality; structured pruning at 0.5 without distillation breaks
# it (perplexity x20 on the reference)
SPACE = ("candidates:\n  - torch_dynamic_int8\n  - {prune_structured: {ratio: 0.5}}\n"
         "  - [export_onnx, ort_dynamic_int8]\n")
LIMITS = ["--tune-limit", "48", "--test-limit", "64", "--ab-seconds", "2", "--threads", "2"]


def _files(tmp_path, budget=BUDGET, space=SPACE):
    (tmp_path / "budget.yaml").write_text(budget)
    (tmp_path / "space.yaml").write_text(space)
    return ["--budget", str(tmp_path / "budget.yaml"), "--space", str(tmp_path / "space.yaml"),
            "--cache", str(tmp_path / "cache")]


def _search(capsys, tmp_path, out, *extra, budget=BUDGET, space=SPACE):
    rc = main(["search", "reference", *_files(tmp_path, budget, space), "--out", str(out),
               *LIMITS, *extra])
    got = capsys.readouterr()
    return rc, got.out, got.err


@pytest.mark.slow
def test_search_confirms_a_winner_on_examples_it_never_screened(capsys, tmp_path):
    out = tmp_path / "s"
    rc, stdout, err = _search(capsys, tmp_path, out)
    assert rc == 0, err
    result = load_file(out / "search.json", "search")
    by = {c.name: c for c in result.candidates}
    assert result.tried == 3 and result.winner is not None
    winner = by[result.winner]
    assert winner.status == "winner" and winner.confirmation
    assert all(t.status == "pass" and t.n == 64 for t in winner.confirmation)
    assert winner.speed.speedup > 1 and winner.speed.pairs > 0
    # the quality-breaker stopped at the first look: 16 of the 48 tune texts
    broken = by["c02"]
    assert (broken.status, broken.stage) == ("rejected", "screen")
    (ppl,) = [s for s in broken.screening if s.task == "perplexity"]
    assert ppl.status == "fail" and ppl.examples == 16 < 48 and ppl.looks == 1
    assert broken.tune_examples == 16 and broken.speed is None and not broken.confirmation
    # screening saw only tune, the confirmation only test
    state = out / "state"
    for side, split in (("baseline", "tune"), ("baseline", "test")):
        ids = [json.loads(line)["id"] for line in (state / f"{side}.{split}.jsonl").open()]
        assert ids and {split_of(i) for i in ids} == {split}
    assert load_recipe(out / "best-recipe.yaml").steps == [(s.name, s.params)
                                                           for s in winner.steps]
    assert "best-suite.yaml" in os.listdir(out) and (out / "frontier.html").is_file()
    assert f"winner {result.winner}" in stdout
    assert main(["validate", str(out / "search.json")]) == 0


@pytest.mark.slow
def test_an_impossible_budget_names_the_closest_and_exits_1(capsys, tmp_path):
    out = tmp_path / "s"
    space = "candidates:\n  - torch_dynamic_int8\n  - {prune_structured: {ratio: 0.5}}\n"
    rc, _, err = _search(capsys, tmp_path, out, budget=(
        "perplexity.perplexity: {non_inferior: 0.0001}\n"), space=space)
    assert rc == 1
    assert "no candidate meets the budget; closest: c01 (torch_dynamic_int8)" in err
    result = load_file(out / "search.json", "search")
    assert result.winner is None and [c.status for c in result.candidates] == ["rejected"] * 2
    assert all(c.screening for c in result.candidates)  # every measured candidate is kept
    assert result.closest[0].startswith("c01") and len(result.closest) == 2
    assert not (out / "best-recipe.yaml").exists() and not (out / "best-suite.yaml").exists()


@pytest.mark.slow
def test_a_killed_search_resumes_without_redoing_anything(capsys, tmp_path):
    out = tmp_path / "s"
    space = "candidates:\n  - torch_dynamic_int8\n  - [export_onnx, ort_dynamic_int8]\n"
    args = ["search", "reference", *_files(tmp_path, space=space), "--out", str(out), *LIMITS]
    proc = subprocess.Popen([sys.executable, "-m", "slimbench.bench.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = out / "state" / "c01.json"
    deadline = time.monotonic() + 600
    try:  # killed once c01 is timed: c02 is screened, and maybe being timed
        while not (first.is_file() and json.loads(first.read_text())["speed"]):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {n: (out / "state" / n).read_bytes() for n in ("c01.json", "c02.json",
                                                             "baseline.tune.jsonl")}
    assert main(args) == 2  # the folder holds a search: --resume, or another --out
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    log = capsys.readouterr().out
    assert not re.search(r"^\[c0\d \d/\d\]", log, re.M)  # nothing built again
    assert not re.search(r"c0[12] .*: passed screening", log)  # nothing screened again
    assert not re.search(r"c01 .*: timed", log)  # nor c01 timed again
    assert (out / "state" / "baseline.tune.jsonl").read_bytes() == \
        before["baseline.tune.jsonl"]
    c01 = load_file(out / "search.json", "search").candidate("c01")
    was = Candidate.from_dict(json.loads(before["c01.json"]))
    assert (c01.screening, c01.speed, c01.content_key) == (was.screening, was.speed,
                                                           was.content_key)


def test_a_budget_for_another_metric_or_an_unmeasured_ceiling_is_refused():
    space = parse_space({"candidates": ["torch_dynamic_int8"]}, "s", "reference")
    for text, want in (({"perplexity.perplexity": {"non_inferior": 0.02},
                         "prefill_ms": {"speedup_at_least": 1.1}},
                        "prefill_ms is not the objective's metric (decode_ms_per_token"),
                       ({"perplexity.perplexity": {"non_inferior": 0.02},
                         "rss_bytes": {"ratio_at_most": 0.9}},
                        "not rss_bytes")):
        with pytest.raises(UsageError, match=want.replace("(", r"\(")):
            SearchConfig("reference", parse_budget(text, "b.yaml"), space, "s", Path("o"))


def test_a_folder_is_resumed_only_for_the_same_question(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match="exists and is not a search's folder"):
        SearchState(tmp_path / "mine", {"model": "reference"}, resume=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    SearchState(tmp_path / "s", {"model": "reference", "alpha": 0.05}, resume=False)
    with pytest.raises(UsageError, match="holds a search already: give --resume"):
        SearchState(tmp_path / "s", {"model": "reference", "alpha": 0.05}, resume=False)
    with pytest.raises(UsageError, match=r"asked something else \(differs in: alpha\)"):
        SearchState(tmp_path / "s", {"model": "reference", "alpha": 0.01}, resume=True)


def _cand(name, degradation, nbytes, status="screened"):
    screen = Screen("perplexity", "perplexity", "non_inferior", 0.02, "pass", 16, 1, 0.0125,
                    degradation, (degradation - 0.01, degradation + 0.01))
    return Candidate(name, [Step("torch_dynamic_int8")], "k", status, "screen",
                     "" if status == "screened" else "x", bytes_on_disk=nbytes,
                     screening=[screen])


def test_dominance_and_the_closest_candidates():
    a, b, c = _cand("a", 0.001, 100), _cand("b", 0.002, 200), _cand("c", 0.001, 300)
    assert _dominates(a, b) and _dominates(a, c) and not _dominates(b, c)
    assert not _dominates(a, a)  # as good on every axis, better on none
    far, near = _cand("far", 0.5, 10, "rejected"), _cand("near", 0.03, 10, "rejected")
    got = closest([far, near])
    assert [g.split(" ")[0] for g in got] == ["near", "far"]
    assert "perplexity.perplexity +0.03 on 16 tune examples vs allowance 0.02" in got[0]


class _Quiet:
    """The bits of a Search that stage() and confirm_best() use, without a model."""

    def __init__(self, tmp_path, confirm=None):
        from slimbench.bench.orchestrate.search import Search, _Clock

        self.search = object.__new__(Search)
        self.search.state = SearchState(tmp_path / "o", {"model": "m"}, resume=False)
        self.search.clock, self.search.say = _Clock(None), lambda *a: None
        self.search.baseline_examples = lambda split: {"t": []}
        self.search.confirm = confirm


def _timed(name, speedup, status="screened", confirmation=(), ci95=None):
    from slimbench.schema.search import Speed

    c = _cand(name, 0.001, 100, status)
    return Candidate(**{**{f: getattr(c, f) for f in c.__dataclass_fields__},
                        "speed": Speed("decode_ms_per_token", speedup,
                                       ci95 or (speedup, speedup), 8),
                        "confirmation": list(confirmation),
                        "why": "" if status != "not_confirmed" else "x"})


def _test(status):
    from slimbench.schema.checks import PairedTest

    return PairedTest("perplexity", 40.0, 40.1, 0.1, (0.05, 0.15), 0.02, 64, 1000, 0, status,
                      "w", "non_inferiority", 0.8, 0.1, (0.05, 0.15), 0.05, 0.001)


def test_one_candidate_s_error_fails_it_alone_and_is_saved(tmp_path):
    q = _Quiet(tmp_path)

    def boom(rec):
        raise RuntimeError("ORT session: bad graph")

    out = q.search.stage(_cand("c01", 0.001, 100), boom, "latency")
    assert (out.status, out.stage, out.why) == ("failed", "latency",
                                                "RuntimeError: ORT session: bad graph")
    assert q.search.state.candidate("c01") == out  # a resume does not meet it again


def test_confirmation_goes_best_first_stops_at_a_pass_and_reuses_saved_ones(tmp_path):
    calls = []

    def confirm(rec, test):
        calls.append(rec.name)
        passed = rec.name != "fast"
        return Candidate(**{**{f: getattr(rec, f) for f in rec.__dataclass_fields__},
                            "status": "winner" if passed else "not_confirmed",
                            "why": "" if passed else "x",
                            "confirmation": [_test("pass" if passed else "fail")]})

    q = _Quiet(tmp_path, confirm)
    # "old" won an earlier, shorter run (saved with its confirmation); this run timed faster ones
    records = {"old": _timed("old", 2.0, "winner", [_test("pass")]),
               "fast": _timed("fast", 5.0), "mid": _timed("mid", 3.0),
               "slow": _timed("slow", 1.5)}
    winner, confirmed = q.search.confirm_best(records)
    assert (winner, confirmed, calls) == ("mid", ["fast", "mid"], ["fast", "mid"])
    assert records["fast"].status == "not_confirmed" and records["mid"].status == "winner"
    assert records["old"].status == "screened" and "mid is better" in records["old"].why
    assert records["slow"].status == "screened" and not records["slow"].confirmation
    calls.clear()  # a resume of this very search confirms nothing again
    assert q.search.confirm_best(records) == ("mid", ["fast", "mid"]) and calls == []


def test_confirmation_ranks_by_the_speedup_the_a_b_vouches_for(tmp_path):
    # a point of 195x with an interval reaching down to 0.5x (an A/B on a busy host) vouches
    # for less than 5.7x [5.5, 5.9]: the sure one is confirmed first
    q = _Quiet(tmp_path, _never_confirmed)
    records = {"wild": _timed("wild", 195.0, ci95=(0.5, 400.0)),
               "sure": _timed("sure", 5.7, ci95=(5.5, 5.9)),
               "wide": _timed("wide", 6.0, ci95=(5.0, 7.0))}
    assert q.search.confirm_best(records)[1] == ["sure", "wide", "wild"]


def _never_confirmed(rec, test):
    """A confirmation that fails (the stand-in for stage 5 without a model)."""
    return Candidate(**{**{f: getattr(rec, f) for f in rec.__dataclass_fields__},
                        "status": "not_confirmed", "why": "x", "confirmation": [_test("fail")]})


def test_at_most_max_confirmations_are_made(tmp_path):
    from slimbench.bench.orchestrate.search import MAX_CONFIRMATIONS

    q = _Quiet(tmp_path, _never_confirmed)
    records = {f"c{i}": _timed(f"c{i}", 10.0 - i) for i in range(MAX_CONFIRMATIONS + 2)}
    winner, confirmed = q.search.confirm_best(records)
    assert winner is None and len(confirmed) == MAX_CONFIRMATIONS
    assert [r.status for r in records.values()].count("screened") == 2


@pytest.mark.slow
def test_the_memory_objective_measures_each_side_s_peak(capsys, tmp_path):
    out = tmp_path / "s"
    rc, _, err = _search(capsys, tmp_path, out, "--objective", "memory", "--tune-limit", "16",
                         "--test-limit", "16",
                         space="candidates:\n  - [export_onnx, ort_dynamic_int8]\n")
    (c,) = load_file(out / "search.json", "search").candidates
    assert c.speed is not None and c.speed.metric == "peak_rss_bytes", (c.status, c.why, err)
    assert c.speed.ci95 is None and c.speed.pairs == 0 and 0.2 < c.speed.speedup < 5
    assert rc == (0 if c.status == "winner" else 1)


def test_an_a_b_is_cut_to_what_is_left_of_the_time_budget():
    from slimbench.bench.orchestrate.search import _Clock

    assert _Clock(None).cap(10.0, 3.0) == 10.0
    clock = _Clock(1.0)
    assert clock.cap(10.0, 3.0) == 10.0  # 60 s left
    clock.t0 -= 55
    assert 3.0 < clock.cap(10.0, 3.0) <= 5.0  # 5 s left
    clock.t0 -= 10
    assert clock.cap(10.0, 3.0) == 3.0  # past it: the minimum, never less


def test_past_the_time_budget_only_the_first_confirmation_runs(tmp_path):
    from slimbench.bench.orchestrate.search import _Clock

    q = _Quiet(tmp_path, _never_confirmed)
    q.search.clock = _Clock(1.0)
    q.search.clock.t0 -= 120  # two minutes into a one-minute budget
    records = {f"c{i}": _timed(f"c{i}", 10.0 - i) for i in range(3)}
    assert q.search.confirm_best(records) == (None, ["c0"])
    assert [r.status for r in records.values()] == ["not_confirmed", "screened", "screened"]

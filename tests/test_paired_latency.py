"""Paired, interleaved latency A/B (`slimbench compare`): the statistics on hand-made numbers,
the command's inputs and output, and real comparisons of the reference with itself."""

import json
import math
import os
import random
from pathlib import Path

import pytest

from slimbench.bench.cli import main
from slimbench.bench.measure import paired
from slimbench.bench.measure.paired import (
    MIN_PAIRS,
    Calibration,
    PairedConfig,
    TrialPlan,
    classify,
    median_ci,
    paired_compare,
    ratio_summary,
    should_stop,
    summarize_trials,
    time_ratio,
)
from slimbench.bench.measure.paired_worker import WorkerModel
from slimbench.bench.measure.scenarios import SCENARIOS
from slimbench.bench.runtimes.base import RuntimeBase
from slimbench.errors import UsageError


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---- classify -------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio,ci,verdict,words", [
    (1.10, (1.08, 1.12), "slower", "> 1.050"),
    (1.05, (1.03, 1.07), "no change", "smaller than the min effect"),  # exactly 1 + e
    (1.0501, (1.03, 1.07), "slower", "excludes 1"),
    (1.10, (1.00, 1.20), "no change", "includes 1"),  # interval touching 1
    (1.10, (0.99, 1.20), "no change", "includes 1"),
    (1.02, (1.01, 1.03), "no change", "smaller than"),  # real but below the min effect
    (0.90, (0.88, 0.92), "faster", "< 0.952"),
    (1 / 1.05, (0.93, 0.97), "no change", "smaller than"),  # exactly 1 / (1 + e)
    (0.90, (0.80, 1.00), "no change", "includes 1"),
    (1.00, (0.99, 1.01), "no change", "includes 1"),
])
def test_classify(ratio, ci, verdict, words):
    got, why = classify(ratio, ci, 0.05)
    assert got == verdict
    assert words in why and "\n" not in why
    assert f"ratio {ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" in why and "min effect 5%" in why


def test_classify_exact_boundary_with_computed_threshold():
    assert classify(1 + 0.1, (1.05, 1.15), 0.1)[0] == "no change"
    assert classify(math.nextafter(1 + 0.1, 2), (1.05, 1.15), 0.1)[0] == "slower"
    assert classify(1.3, (1.0, 1.5), 0.1)[0] == "no change"  # lo == 1: not shown slower
    assert classify(0.7, (0.5, 1.0), 0.1)[0] == "no change"  # hi == 1: not shown faster
    assert classify(1.001, (1.0005, 1.002), 0.0)[0] == "slower"  # min effect 0: any change


# ---- statistics -------------------------------------------------------------------------------

def test_median_ci_order_statistics():
    # n = 10: P(B <= 1) = 11/1024 <= 2.5% < P(B <= 2) = 56/1024, so [x_(2), x_(9)]
    values = [7.0, 1.0, 9.0, 3.0, 5.0, 2.0, 10.0, 4.0, 8.0, 6.0]
    assert median_ci(values) == (5.5, 2.0, 9.0)
    # n = 20: P(B <= 5) = 2.07% <= 2.5% < P(B <= 6) = 5.77%: [x_(6), x_(15)]
    assert median_ci([float(i) for i in range(1, 21)]) == (10.5, 6.0, 15.0)
    assert median_ci([4.0]) == (4.0, 4.0, 4.0)
    assert median_ci([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)  # too few for 95%: (min, max)


def test_median_ci_covers_the_median_of_a_known_distribution():
    import random

    rng = random.Random(1)
    covered = 0
    for _ in range(400):
        lo, hi = median_ci([rng.lognormvariate(0, 0.3) for _ in range(30)])[1:]
        covered += lo <= 1.0 <= hi  # the lognormal's median is exp(0) = 1
    assert covered / 400 >= 0.93  # nominal >= 95%


def test_ratio_summary_of_hand_made_pairs():
    base = [10.0, 10.0, 20.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 40.0]
    cand = [11.0, 12.0, 22.0, 10.5, 11.5, 13.0, 11.0, 11.0, 12.0, 10.0, 44.0]
    # per-pair ratios 1.1 1.2 1.1 1.05 1.15 1.3 1.1 1.1 1.2 1.0 1.1 -> median 1.1, while the
    # medians' ratio (11.5 / 10) would mix pairs measured in different host states
    s = ratio_summary(base, cand)
    assert s.ratio == pytest.approx(1.1)
    assert s.ci95[0] <= 1.1 <= s.ci95[1]
    assert s.ci95 == pytest.approx((1.05, 1.2))  # n = 11: [x_(2), x_(10)]
    assert s.baseline == 10.0 and s.candidate == 11.5


def test_drift_cancels_in_pairs():
    # the host slows down 3x over the run; the candidate is always 10% slower than its pair
    base = [1.0 + 0.1 * i for i in range(20)]
    cand = [1.1 * b for b in base]
    s = ratio_summary(base, cand)
    assert s.ratio == pytest.approx(1.1) and s.ci95 == pytest.approx((1.1, 1.1))


def test_should_stop():
    cfg = PairedConfig(min_seconds=10, max_seconds=60, precision=0.02)
    narrow = [1.0 + 0.001 * (i % 5) for i in range(40)]
    wide = [0.7 + 0.6 * (i % 2) for i in range(40)]
    assert not should_stop(narrow[:MIN_PAIRS - 1], 100.0, cfg)  # too few pairs, even late
    assert should_stop(narrow[:MIN_PAIRS], 60.0, cfg)  # max_seconds
    assert not should_stop(narrow, 9.9, cfg)  # before min_seconds, however narrow
    assert should_stop(narrow, 10.0, cfg)  # min_seconds and within ±2%
    assert not should_stop(wide, 30.0, cfg)  # not precise yet
    assert should_stop(wide, 60.0, cfg)
    assert should_stop(wide, 57.0, cfg, pair_seconds=4.0)  # the next pair would end past 60 s
    assert not should_stop(wide, 50.0, cfg, pair_seconds=4.0)


def test_every_timed_trial_follows_the_other_side(monkeypatch):
    log = []

    class FakeWorker:
        def __init__(self, role):
            self.role = role

        def request(self, name, plan, timeout):
            log.append((self.role, plan.filler))
            return {"decode_ms_per_token": 2.0 if self.role == "candidate" else 1.0}

    monkeypatch.setattr(paired, "GAP_SECONDS", 0.0)
    cfg = PairedConfig(min_seconds=0, max_seconds=1e-9, seed=3)
    plan = {"baseline": TrialPlan(steps=4), "candidate": TrialPlan(steps=4)}
    trials, _ = paired._pairs({r: FakeWorker(r) for r in plan}, plan, cfg, False)
    assert len(trials) == MIN_PAIRS  # stopped as early as allowed
    assert all(log[i][0] != log[i + 1][0] for i in range(len(log) - 1))  # alternation
    fillers = sum(f for _, f in log)
    assert 0 < fillers < len(log) / 2 and len(log) == 2 * (MIN_PAIRS + 1) + fillers
    assert {t["baseline_first"] for t in trials} == {True, False}  # the order stays random
    assert all(t["candidate"]["decode_ms_per_token"] == 2.0 for t in trials)
    orders = paired.pair_orders(random.Random(3))
    assert [t["baseline_first"] for t in trials] == [next(orders) for _ in range(11)][1:]


def test_filler_trials_keep_the_decode_units_in_lockstep(monkeypatch):
    b = _bench(monkeypatch, "decode")
    b.trial(TrialPlan(steps=2))
    b.trial(TrialPlan(steps=2, filler=True))  # 2 one-token forwards without a cache
    b.trial(TrialPlan(steps=2))  # continues the main unit: steps 3 and 4, no prefill
    assert b.rt.calls == [9, 1, 1, 1, 1, 1, 1]
    assert b.rt.cacheless == [3, 4]  # the filler's calls kept no cache


def test_busy_machine_warning(monkeypatch):
    from slimbench.bench.measure import paired_worker

    monkeypatch.setattr(paired_worker.os, "cpu_count", lambda: 2)
    assert paired_worker.busy_warning(0.2, 2, "cpu") is None
    assert paired_worker.busy_warning(1.1, 1, "cpu") is None
    assert paired_worker.busy_warning(None, 2, "cpu") is None
    assert "other work used 1.5 of its 2 cores" in paired_worker.busy_warning(1.5, 2, "cpu")
    assert "fewer --threads" in paired_worker.busy_warning(1.5, 2, "cpu")
    assert "fewer --threads" not in paired_worker.busy_warning(1.5, 1, "cpu")
    assert paired_worker.busy_warning(1.5, 2, "cuda") is None


def test_other_cores_from_cpu_snapshots(monkeypatch):
    from slimbench.bench.measure import paired_worker

    monkeypatch.setattr(paired_worker.os, "cpu_count", lambda: 2)
    # 2 CPUs x 100 jiffies; 150 busy, of which 90 ours: others used 60 / 100 = 0.6 cores
    assert paired_worker.other_cores((0, 0, 0), (150, 200, 90)) == pytest.approx(0.6)
    assert paired_worker.other_cores(None, (150, 200, 90)) is None
    snap = paired_worker.cpu_snapshot([os.getpid()])
    assert snap is None or (snap[0] <= snap[1] and snap[2] >= 0)



@pytest.mark.parametrize("scenario,units,steps,new_tokens,plan", [
    ("prefill", (10, 10), None, 32, ({"units": 20}, {"units": 20})),
    ("prefill", (10, 1000), None, 32, ({"units": 20}, {"units": 1})),  # K >= 1, per side
    ("decode", (100, 100), (3, 3), 32, ({"units": 2}, {"units": 2})),  # short units: whole
    ("decode", (100, 2000), (3, 60), 32, ({"units": 2}, {"units": 1})),  # one side short
    ("decode", (2000, 2000), (40, 40), 32, ({"steps": 4}, {"steps": 4})),  # 0.2 s = 5 steps
    ("decode", (2000, 4000), (20, 40), 32, ({"steps": 8}, {"steps": 8})),  # both alike
    ("decode", (2000, 2000), (40, 40), 30, ({"steps": 5}, {"steps": 5})),  # divides 30
    ("generate", (2000, 2000), None, 32, ({"units": 1}, {"units": 1})),
])
def test_trial_plan(scenario, units, steps, new_tokens, plan):
    roles = ("baseline", "candidate")
    cal = {r: Calibration(unit_ms=units[i], warmup_units=3,
                          step_ms=steps[i] if steps else None)
           for i, r in enumerate(roles)}
    cfg = PairedConfig(scenario=scenario, new_tokens=new_tokens, trial_seconds=0.2)
    assert paired.trial_plan(cfg, cal) == {roles[0]: TrialPlan(**plan[0]),
                                           roles[1]: TrialPlan(**plan[1])}


class _Clock:
    """A fake perf_counter: 1 us per reading, plus what the fake model 'computes'."""

    t = 0.0

    def __call__(self):
        self.t += 1e-6
        return self.t


class _FakeRuntime:
    vocab_size, max_length, backend = 16, 64, "fake"

    def __init__(self, clock):
        self.clock, self.calls, self.cacheless = clock, [], []

    burst = range(0)  # calls that other work slows down 3x

    def forward(self, ids, past=None, keep_cache=True, last_only=False):
        import torch

        slow = 3 if len(self.calls) in self.burst else 1
        self.clock.t += 0.010 * ids.shape[1] ** 0.5 * slow  # 10 ms a step, more for a prompt
        if not keep_cache:
            self.cacheless.append(len(self.calls))
        self.calls.append(ids.shape[1])
        logits = torch.zeros(1, ids.shape[1], self.vocab_size)
        return logits, ((past or 0) + ids.shape[1]) if keep_cache else None

    def sync(self):
        pass

    greedy_start, greedy_step = RuntimeBase.greedy_start, RuntimeBase.greedy_step


def _bench(monkeypatch, scenario, slowdown=0.0, new_tokens=4):
    import torch

    from slimbench.bench.measure import paired_worker

    clock = _Clock()
    monkeypatch.setattr(paired_worker.time, "perf_counter", clock)
    b = paired_worker._Bench.__new__(paired_worker._Bench)
    b.scenario, b.length, b.new_tokens, b.slowdown = scenario, 9, new_tokens, slowdown
    b.rt, b.prompt, b._states = _FakeRuntime(clock), torch.zeros(1, 9, dtype=torch.long), {}
    b.defn = SCENARIOS.get(scenario)
    return b


def test_decode_trials_of_steps_continue_a_unit(monkeypatch):
    b = _bench(monkeypatch, "decode")
    for _ in range(3):
        b.trial(TrialPlan(steps=2))
    # prefill (9 tokens), 2 steps, 2 steps; then the unit is done: a new prefill
    assert b.rt.calls == [9, 1, 1, 1, 1, 9, 1, 1]
    b.trial(TrialPlan(units=2))  # whole units: each its own prefill and all its steps
    assert b.rt.calls[8:] == [9, 1, 1, 1, 1, 9, 1, 1, 1, 1]
    assert b.trial(TrialPlan(steps=2))["decode_ms_per_token"] == pytest.approx(10, abs=0.1)


def test_warmup_sizes_trials_from_the_fastest_unit(monkeypatch):
    b = _bench(monkeypatch, "decode")
    b.rt.burst = range(5, 15)  # units 2 and 3 of the warm-up meet a burst of other work
    cal = b.warmup()
    assert cal.warmup_units >= 3
    assert cal.unit_ms == pytest.approx(30 + 4 * 10, abs=0.1)  # a 9-token prefill, 4 steps
    assert cal.step_ms == pytest.approx(10, abs=0.01)


@pytest.mark.slow
def test_decode_steps_and_fillers_on_onnx_runtime(monkeypatch, tmp_path, tiny_dir):
    """ORT continues only the cache of its latest call: a filler must leave it alone."""
    import torch

    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import load_artifact
    from slimbench.compress.steps import run_step

    run_step("export_onnx", {}, str(tiny_dir), tmp_path / "onnx")
    b = _bench(monkeypatch, "decode")
    b.rt = make_runtime(load_artifact(str(tmp_path / "onnx")), threads=1)
    b.prompt = torch.zeros(1, 9, dtype=torch.long)
    assert b.rt.backend == "onnxruntime"
    for _ in range(5):  # across the end of a unit, too
        b.trial(TrialPlan(steps=2, filler=True))
        assert set(b.trial(TrialPlan(steps=2))) == {"decode_ms_per_token"}
    assert set(b.trial(TrialPlan(units=2))) == {"decode_ms_per_token"}


@pytest.mark.parametrize("scenario", ["prefill", "decode", "generate"])
def test_injected_slowdown_scales_every_metric(monkeypatch, scenario):
    plain = _bench(monkeypatch, scenario).trial(TrialPlan(units=3))
    slow = _bench(monkeypatch, scenario, slowdown=0.1).trial(TrialPlan(units=3))
    metrics = SCENARIOS.get(scenario).metrics
    assert set(plain) == {m.name for m in metrics}
    for m in metrics:  # a rate (tokens/s) drops by as much as a time grows
        want = 1 / 1.1 if m.higher_is_better else 1.1
        assert slow[m.name] / plain[m.name] == pytest.approx(want, abs=0.002), m.name

def _trials(pairs, first=None):
    """Synthetic decode trials: ``pairs`` of (baseline, candidate) ms."""
    return [{"baseline": {"decode_ms_per_token": b}, "candidate": {"decode_ms_per_token": c},
             "baseline_first": (i % 2 == 0) if first is None else first}
            for i, (b, c) in enumerate(pairs)]


def test_summarize_result_structure():
    pairs = [(10.0 + i % 3, 13.0 + i % 3) for i in range(12)]
    fp = {"cpu": "X", "isa": ["avx2"], "threads": 2, "gpu": None, "packages": {"torch": "2"}}
    res = summarize_trials("a", "b", PairedConfig(), _trials(pairs), 12.5,
                    {"baseline": fp, "candidate": dict(fp, threads=4)})
    assert res.metric == "decode_ms_per_token" and res.unit == "ms" and res.pairs == 12
    assert res.verdict == "slower" and res.ratio > 1.2
    lo, hi = res.ci95
    assert res.speedup == pytest.approx(1 / res.ratio)
    assert res.speedup_ci95 == pytest.approx((1 / hi, 1 / lo))
    assert res.trials[0] == (10.0, 13.0, True) and len(res.trials) == 12
    assert res.by_order.baseline_first.pairs == 6
    assert any("threads: 2 -> 4" in w for w in res.warnings)
    d = json.loads(json.dumps(res.to_dict()))  # plain JSON values
    assert d["verdict"] == "slower" and d["ratios"]["decode_ms_per_token"]["ci95"] == [lo, hi]
    assert d["trials"][0] == [10.0, 13.0, True] and d["by_order"]["baseline_first"]["pairs"] == 6
    assert d["config"]["scenario"] == "decode" and d["speedup_ci95"] == pytest.approx([1 / hi,
                                                                                       1 / lo])
    assert res.verdict_line.startswith("verdict: slower (ratio ")


def test_an_engines_own_library_is_no_difference_of_environment():
    """A cross-engine A/B (GenAI against ONNX Runtime): each worker's fingerprint holds its
    engine's libraries; only a library both hold at different versions is a difference."""
    pairs = [(10.0 + i % 3, 13.0 + i % 3) for i in range(12)]
    fp = {"cpu": "X", "isa": ["avx2"], "threads": 2, "gpu": None, "packages": {"torch": "2"}}
    genai = dict(fp, packages={"torch": "2", "onnxruntime-genai-cuda": "0.18.0"})
    res = summarize_trials("a", "b", PairedConfig(), _trials(pairs), 12.5,
                           {"baseline": genai, "candidate": fp})
    assert not any("environments differ" in w for w in res.warnings)
    res = summarize_trials("a", "b", PairedConfig(), _trials(pairs), 12.5,
                           {"baseline": genai, "candidate": dict(fp, packages={"torch": "3"})})
    assert [w for w in res.warnings if "environments differ" in w] == [
        "the two workers' environments differ: torch: 2 -> 3"]


def test_summarize_warns_when_the_interval_is_wider_than_the_min_effect():
    pairs = [(10.0, 10.0 * (0.7 + 0.6 * (i % 2))) for i in range(12)]
    res = summarize_trials("a", "a", PairedConfig(), _trials(pairs), 60.0, {})
    assert res.verdict == "no change"
    assert any("--max-seconds" in w for w in res.warnings)
    assert any("environments differ" in w for w in res.warnings)  # none recorded


def test_summarize_generate_has_every_metric():
    trials = [{"baseline": {"generate_ms": 100.0, "ttft_ms": 10.0, "tpot_ms": 3.0,
                            "tokens_per_s": 320.0},
               "candidate": {"generate_ms": 90.0, "ttft_ms": 9.0, "tpot_ms": 2.7,
                             "tokens_per_s": 320 / 0.9},
               "baseline_first": True}] * 10
    res = summarize_trials("a", "b", PairedConfig(scenario="generate"), trials, 1.0, {})
    assert set(res.ratios) == {"generate_ms", "ttft_ms", "tpot_ms", "tokens_per_s"}
    assert res.metric == "generate_ms" and res.ratio == pytest.approx(0.9)
    assert res.verdict == "faster"
    # a rate's ratio is the inverse of a time's: read as a time ratio it is the same 0.9
    rate = res.ratios["tokens_per_s"]
    assert rate.higher_is_better and rate.unit == "tok/s"
    assert time_ratio(rate)[0] == pytest.approx(0.9)
    assert time_ratio(res.ratios["generate_ms"])[0] == pytest.approx(0.9)


# ---- configuration and command line ---------------------------------------------------------

@pytest.mark.parametrize("kw,msg", [
    ({"scenario": "bogus"}, "unknown scenario 'bogus'"),
    ({"length": 0}, "length must be >= 1"),
    ({"length": 1.5}, "length must be an integer"),
    ({"new_tokens": 0}, "new_tokens must be >= 1"),
    ({"scenario": "generate", "new_tokens": 1}, "new_tokens must be >= 2 for generate"),
    ({"threads": -2}, "threads must be >= 1"),
    ({"min_seconds": 5, "max_seconds": 1}, "min_seconds <= max_seconds"),
    ({"max_seconds": float("nan")}, "max_seconds must be a finite number"),
    ({"precision": 0}, "precision must be in (0, 1)"),
    ({"min_effect": -0.1}, "min_effect must be in [0, 1)"),
    ({"min_effect": "5%"}, "min_effect must be a finite number"),
    ({"trial_seconds": 0}, "trial_seconds must be in"),
])
def test_config_bad_values(kw, msg):
    with pytest.raises(UsageError, match=None) as e:
        PairedConfig(**kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv,msg", [
    (["--min-seconds", "5", "--max-seconds", "1"], "min_seconds <= max_seconds"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["--inject-slowdown", "-1"], "slowdown must be a number in [0, 100]"),
    (["--min-effect", "1.5"], "min_effect must be in [0, 1)"),
])
def test_compare_bad_input_before_any_work(capsys, argv, msg):
    rc, out, err = run(capsys, "compare", "reference", "reference", *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("slimbench: error: ") and msg in err


def test_compare_bad_scenario_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "reference", "reference", "--scenario", "bogus"])
    assert e.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_compare_refuses_existing_json(capsys, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("{}")
    rc, _, err = run(capsys, "compare", "reference", "reference", "--json", str(out))
    assert rc == 2 and "already exists" in err and out.read_text() == "{}"


def _fake(monkeypatch, pairs):
    """Replace the measurement with synthetic pairs, recording the config it got."""
    seen = {}

    def fake(baseline, candidate, config, slowdown=0.0, show_progress=False, **kw):
        seen.update(config=config, slowdown=slowdown)
        res = summarize_trials(baseline, candidate, config, _trials(pairs), 11.0, {})
        res.models = {r: WorkerModel(spec=r, backend="torch", device="cpu",
                                     parameters=2_600_000, threads=2, dtype="float32",
                                     kind="local", recipe=[], bytes_on_disk=None,
                                     weights_sha256=None, pid=1)
                      for r in ("baseline", "candidate")}
        res.calibration = {r: Calibration(unit_ms=60.0, warmup_units=3, units_per_trial=3)
                           for r in ("baseline", "candidate")}
        return res

    monkeypatch.setattr(paired, "paired_compare", fake)
    return seen


def test_compare_slower_exits_1_and_writes_json(capsys, monkeypatch, tmp_path):
    seen = _fake(monkeypatch, [(10.0, 12.3 + 0.01 * i) for i in range(15)])
    out = tmp_path / "sub" / "cmp.json"
    rc, text, err = run(capsys, "compare", "a", "b", "--json", str(out), "--inject-slowdown",
                        "0.5")
    assert rc == 1
    assert "decode_ms_per_token  median 10.000 ms -> 12.370 ms, ratio 1.237" in text
    assert "verdict: slower (ratio 1.237" in text and "2.6 M params" in text
    assert "15 pairs in 11.0 s (3 / 3 units per trial)" in text
    assert err.startswith("slimbench: warning: ")  # no fingerprints in the fake
    assert "slimbench: error: verdict: slower (ratio 1.237" in err
    saved = json.loads(out.read_text())
    assert saved["verdict"] == "slower" and saved["pairs"] == 15
    assert seen["slowdown"] == 0.5 and seen["config"].min_effect == 0.05


def test_compare_min_effect_from_policy(capsys, monkeypatch, tmp_path):
    seen = _fake(monkeypatch, [(10.0, 10.8 + 0.01 * i) for i in range(15)])  # ~8.7% slower
    policy = tmp_path / "policy.yaml"
    policy.write_text("default: {latency: 0.10}\n")
    rc, text, _ = run(capsys, "compare", "a", "b", "--policy", str(policy))
    assert rc == 0 and seen["config"].min_effect == 0.10 and "verdict: no change" in text
    policy.write_text("metrics: {decode_ms_per_token: {relative: 0.03}}\n")
    rc, text, _ = run(capsys, "compare", "a", "b", "--policy", str(policy))
    assert rc == 1 and seen["config"].min_effect == 0.03
    rc, _, _ = run(capsys, "compare", "a", "b", "--policy", str(policy), "--min-effect", "0.2")
    assert rc == 0 and seen["config"].min_effect == 0.2  # --min-effect wins
    policy.write_text("metrics: {decode_ms_per_token: {absolute: 0.5}}\n")
    rc, _, err = run(capsys, "compare", "a", "b", "--policy", str(policy))
    assert rc == 2 and "needs a relative one" in err


# ---- real comparisons ---------------------------------------------------------------------

FAST = ("--length", "16", "--new-tokens", "4", "--threads", "1", "--min-seconds", "1",
        "--max-seconds", "3")


@pytest.mark.slow
@pytest.mark.parametrize("argv,msg", [
    (["nosuch", "reference"], "baseline nosuch: no local directory 'nosuch'"),
    (["reference", "reference", "--length", "250", "--new-tokens", "32"],
     "decode needs 282 positions (length 250 + 32 new tokens), the model has 256"),
])
def test_compare_bad_model_one_line(capsys, argv, msg):
    rc, out, err = run(capsys, "compare", *argv, "--min-seconds", "1", "--max-seconds", "2")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("slimbench: error: ") and msg in err


@pytest.mark.slow
def test_compare_reference_with_itself(capsys, tmp_path):
    out = tmp_path / "cmp.json"
    rc, text, err = run(capsys, "compare", "reference", "reference", *FAST, "--json", str(out))
    assert rc == 0, err
    assert "verdict: no change" in text or "verdict: faster" in text
    d = json.loads(out.read_text())
    assert d["baseline"] == d["candidate"] == "reference" and d["metric"] == "decode_ms_per_token"
    assert d["pairs"] >= MIN_PAIRS and len(d["trials"]) == d["pairs"]
    assert {t[2] for t in d["trials"]} == {True, False}  # both orders occur
    assert all(b > 0 and c > 0 for b, c, _ in d["trials"])
    lo, hi = d["ci95"]
    assert lo <= d["ratio"] <= hi and d["speedup"] == pytest.approx(1 / d["ratio"])
    assert d["fingerprints"]["baseline"] == d["fingerprints"]["candidate"] is not None
    assert d["fingerprints"]["baseline"]["threads"] == 1
    assert d["models"]["baseline"]["pid"] != d["models"]["candidate"]["pid"]  # two processes
    assert d["calibration"]["baseline"]["units_per_trial"] >= 1
    assert d["config"]["length"] == 16 and d["seconds"] >= 1
    assert d["host"]["other_cores"] is None or d["host"]["other_cores"] >= 0


@pytest.mark.slow
def test_injected_slowdown_is_found():
    cfg = PairedConfig(scenario="prefill", length=32, threads=1, min_seconds=1, max_seconds=3)
    res = paired_compare("reference", "reference", cfg, slowdown=1.0)
    assert res.pairs >= MIN_PAIRS and res.ratio > 1.5  # true ratio 2
    assert res.verdict == "slower" and res.ci95[0] > 1.5


def test_worker_error_keeps_its_class_and_one_line():
    from slimbench.bench.measure.paired_worker import _error

    try:
        raise UsageError("x: too long\nsecond line")
    except UsageError as e:
        assert _error(e) == ("error", "UsageError", "x: too long", True)
    assert _error(RuntimeError())[1:] == ("RuntimeError", "", False)


def test_module_files_stay_small():
    root = Path(paired.__file__).parent
    for name in ("paired.py", "paired_stats.py", "paired_worker.py"):
        assert len((root / name).read_text().splitlines()) < 400

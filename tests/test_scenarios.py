"""Scenarios are defined once (``bench/measure/scenarios.py``): a cell and the paired A/B
worker time the same unit-of-work functions and name their metrics the same way, so a metric
added to a scenario's definition appears in both. No timing values are asserted."""

import pytest

from slimbench.bench.measure import paired, scenarios
from slimbench.bench.measure.scenarios import SCENARIOS, Metric

NEW = 3


@pytest.fixture
def counted(monkeypatch):
    """Every scenario's unit wrapped to count its calls, and one metric added to each."""
    calls = {s: 0 for s in SCENARIOS}
    for name in SCENARIOS:
        defn = SCENARIOS.get(name)

        def unit(*args, _inner=defn.unit, _name=name, **kw):
            calls[_name] += 1
            return _inner(*args, **kw)

        monkeypatch.setattr(defn, "unit", unit)
        monkeypatch.setattr(defn, "metrics", defn.metrics + (
            Metric("units_seen", "count", lambda t: [1.0], higher_is_better=True),))
    return calls


def test_cell_and_paired_worker_time_the_same_units(counted, tiny_dir):
    from slimbench.bench.measure.cell import LatencyConfig, measure_latency
    from slimbench.bench.measure.paired_worker import _Bench
    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import load_artifact

    # the cell path (cell.py measure_latency): every scenario, its metrics as the definition has
    art = load_artifact(str(tiny_dir))
    rt = make_runtime(art, threads=1)
    cfg = LatencyConfig(prefill=(8,), decode_contexts=(8,), new_tokens=NEW, generate_prompt=8,
                        repeats=2, min_seconds=0.0)
    cell = measure_latency(rt, art, cfg, "cpu").latency.scenarios
    assert [s.scenario for s in cell] == ["prefill", "decode", "generate"]
    assert all(counted[s] > 0 for s in SCENARIOS)
    for s in cell:
        names = [m.name for m in s.measurements]
        assert names == [m.name for m in SCENARIOS.get(s.scenario).metrics]
        assert names[-1] == "units_seen" and s.measurement("units_seen").higher_is_better
    # the decode cell keeps one sample per step: the unit's, derived by the same metric
    assert cell[1].measurement("decode_ms_per_token").n == cell[1].params["repeats"] * NEW

    # the paired worker: the same unit functions, the same metric names, in a trial and in
    # the comparison's ratios
    for name in SCENARIOS:
        before = counted[name]
        bench = _Bench(str(tiny_dir), {
            "scenario": name, "length": 8, "new_tokens": NEW, "device": "cpu", "dtype": None,
            "threads": 1, "allow_pickle": False, "trust_remote_code": False}, 0.0)
        values = bench.trial(paired.TrialPlan(units=2))
        assert counted[name] == before + 2
        assert set(values) == {m.name for m in SCENARIOS.get(name).metrics}
        assert values["units_seen"] == 1.0
        trials = [{"baseline": values, "candidate": values, "baseline_first": i % 2 == 0}
                  for i in range(10)]
        config = paired.PairedConfig(scenario=name, new_tokens=NEW)
        res = paired.summarize_trials("a", "a", config, trials, 1.0, {})
        assert "units_seen" in res.ratios and res.ratios["units_seen"].ratio == 1.0


def test_decode_trials_in_steps_use_the_decode_steps_of_the_scenario(monkeypatch, tiny_dir):
    """A decode trial of c steps (a unit too long for one trial) continues a unit with the
    scenario's own ``decode_start`` and ``decode_steps``."""
    from slimbench.bench.measure.paired_worker import _Bench

    seen = []
    real = scenarios.decode_steps
    monkeypatch.setattr(scenarios, "decode_steps",
                        lambda rt, state, k, clock=None: seen.append(k) or real(rt, state, k,
                                                                                  clock))
    bench = _Bench(str(tiny_dir), {
        "scenario": "decode", "length": 8, "new_tokens": 4, "device": "cpu", "dtype": None,
        "threads": 1, "allow_pickle": False, "trust_remote_code": False}, 0.0)
    for _ in range(3):
        assert set(bench.trial(paired.TrialPlan(steps=2))) == {"decode_ms_per_token"}
    assert seen == [2, 2, 2]


def test_every_latency_metric_names_one_scenario():
    names = [m.name for s in SCENARIOS for m in SCENARIOS.get(s).metrics]
    assert len(names) == len(set(names))  # a results row's name says its scenario
    assert set(paired.SCENARIO_OF_METRIC) == set(names)
    for s in SCENARIOS:
        assert paired.PRIMARY[s] in [m.name for m in SCENARIOS.get(s).metrics]
    rate = SCENARIOS.get("generate").metrics[2]
    assert rate.name == "tokens_per_s" and rate.higher_is_better and rate.unit == "tok/s"


def test_prompt_tokens_are_seeded_and_nested():
    a = scenarios.prompt_tokens(100, 8, batch=4)
    assert a.shape == (4, 8) and int(a.max()) < 100
    assert (a[:1] == scenarios.prompt_tokens(100, 8)).all()
    assert (a == scenarios.prompt_tokens(100, 8, batch=4)).all()


def test_remeasure_judges_a_rate_row_on_its_own_metric():
    """``tokens_per_s@64`` is re-measured as the pair's ``tokens_per_s`` (no translation to
    another metric): 20% fewer tokens/s is a time ratio of 1.25, slower."""
    from types import SimpleNamespace

    from slimbench.bench.orchestrate.remeasure import _decide, _scenario

    assert _scenario("tokens_per_s@64", {"new_tokens": 8})[:2] == ("tokens_per_s", "generate")
    from slimbench.bench.measure.paired import MetricRatio

    result = SimpleNamespace(pairs=12, seconds=3.0, scenario="generate", ratios={
        "tokens_per_s": MetricRatio(ratio=0.8, ci95=(0.75, 0.85), baseline=100.0,
                                    candidate=80.0, unit="tok/s", higher_is_better=True)})
    policy = SimpleNamespace(allowance=lambda kind, metric: ("relative", 0.05))
    from slimbench.schema import Check

    check = Check(variant="v", device="cpu", metric="tokens_per_s@64", status="pass", why="")
    out = _decide(check, result, "tokens_per_s", policy)
    assert out.status == "fail" and out.paired_latency.ratio == pytest.approx(1.25)
    lo, hi = out.paired_latency.ci95
    assert (lo, hi) == (pytest.approx(1 / 0.85), pytest.approx(1 / 0.75))

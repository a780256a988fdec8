"""``slimbench search --executor ray``: the decisions of a local search, with the screens and
A/Bs as Ray tasks on a local cluster (2 CPUs, the latency slot, loopback only); a search the
cluster cannot run refused before anything is written."""

from __future__ import annotations

import logging
import os
import re

import pytest

from slimbench.bench.cli import main
from slimbench.schema import load_file

SLOT = "slimbench_latency_slot"
BUDGET = ("perplexity.perplexity: {non_inferior: 0.02}\n"
          "next_line.acc: {no_significant_loss: 5, mode: absolute}\n")
# ORT int8 keeps quality and is faster; structured pruning at 0.5 breaks perplexity
SPACE = ("candidates:\n  - [export_onnx, ort_dynamic_int8]\n"
         "  - {prune_structured: {ratio: 0.5}}\n")
LIMITS = ["--tune-limit", "48", "--test-limit", "48", "--ab-seconds", "2", "--threads", "2"]


def _args(tmp_path, out, *extra):
    (tmp_path / "budget.yaml").write_text(BUDGET)
    (tmp_path / "space.yaml").write_text(SPACE)
    return ["search", "reference", "--budget", str(tmp_path / "budget.yaml"), "--space",
            str(tmp_path / "space.yaml"), "--out", str(out), *LIMITS, *extra]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for the module: 2 CPUs, no GPU, the latency slot."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=0, resources={SLOT: 1}, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("extra, nodes, msg", [
    ((), {"CPU": 4.0}, f"no node of the cluster offers it: start each node with `ray start "
                       f"... --resources='{{\"{SLOT}\": 1}}'`"),
    (("--threads", "8"), {"CPU": 4.0, SLOT: 1.0},
     "--threads 8 needs a node with 8 CPUs and the slimbench_latency_slot; the largest has 4"),
    (("--device", "cuda"), {"CPU": 4.0, SLOT: 1.0}, "no node of the Ray cluster offers a GPU"),
    (("--device", "cuda:1"), {"CPU": 4.0, SLOT: 1.0}, "name the device cuda"),
])
def test_a_search_the_cluster_cannot_run_is_refused(tmp_path, monkeypatch, capsys, extra,
                                                    nodes, msg):
    pytest.importorskip("ray")
    from slimbench.bench.orchestrate import ray_cluster

    monkeypatch.setattr(ray_cluster, "connect", lambda *a: False)
    monkeypatch.setattr(ray_cluster, "cluster", lambda ray: ray_cluster.Cluster(
        (ray_cluster.Node(id="n1", ip="10.0.0.1", resources=nodes),), None))
    out = tmp_path / "s"
    assert main(_args(tmp_path, out, "--executor", "ray", "--address", "auto", *extra)) == 2
    assert re.search(re.escape(msg), capsys.readouterr().err)
    assert not out.exists() and not (tmp_path / ".artifacts").exists()


def test_ray_flags_need_the_ray_executor(tmp_path, capsys):
    assert main(_args(tmp_path, tmp_path / "s", "--address", "auto")) == 2
    assert "--address applies to --executor ray" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_search_decides_as_the_local_one(cluster, tmp_path, capsys):
    cache = ["--cache", str(tmp_path / "cache")]
    assert main(_args(tmp_path, tmp_path / "local", *cache)) == 0
    capsys.readouterr()
    rc = main(_args(tmp_path, tmp_path / "ray", "--executor", "ray",
                    "--artifact-store", str(tmp_path / "cache")))
    err = capsys.readouterr().err
    assert rc == 0, err
    local = load_file(tmp_path / "local" / "search.json", "search")
    ray = load_file(tmp_path / "ray" / "search.json", "search")
    assert ray.winner == local.winner == "c01"
    for mine, theirs in zip(ray.candidates, local.candidates, strict=True):
        # the same artifact and examples: the same screens, to the last digit
        assert (mine.name, mine.status, mine.stage, mine.content_key, mine.tune_examples) == \
            (theirs.name, theirs.status, theirs.stage, theirs.content_key,
             theirs.tune_examples)
        assert [(s.task, s.metric, s.status, s.examples, s.degradation)
                for s in mine.screening] == [(s.task, s.metric, s.status, s.examples,
                                              s.degradation) for s in theirs.screening]
        assert [(t.metric, t.status, t.n) for t in mine.confirmation] == \
            [(t.metric, t.status, t.n) for t in theirs.confirmation]
    timed = ray.candidate("c01").speed
    assert timed.pairs > 0 and timed.speedup > 1 and timed.ci95[0] > 1
    assert ray.candidate("c02").status == "rejected" and ray.candidate("c02").speed is None


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def test_closing_cancels_what_is_still_running(cluster):
    """Ctrl-C, or any error, ends run_search through the executor's close(): nothing of the
    search may run on without its driver."""
    from types import SimpleNamespace

    from slimbench.bench.orchestrate.search_ray import RaySearchExecutor

    # tasks closed on at once, as they are being handed to workers: a cancel that reaches a
    # task its worker has not started yet can be lost in Ray, and close() must not lose it
    for _ in range(5):
        executor = RaySearchExecutor("auto")  # the module's cluster: close() leaves it up
        refs = [cluster.remote(_sleep).remote(120) for _ in range(3)]
        executor.running = {r: (SimpleNamespace(name=f"c0{i}"), "latency")
                            for i, r in enumerate(refs)}
        executor.close()
        done, _ = cluster.wait(refs, num_returns=len(refs), timeout=0)
        assert len(done) == len(refs)  # ended when close() returns, not 120 s later
        for ref in refs:
            with pytest.raises(cluster.exceptions.TaskCancelledError):
                cluster.get(ref, timeout=1)
        assert executor.running == {} and cluster.is_initialized()

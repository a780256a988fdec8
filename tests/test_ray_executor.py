"""``slimbench run --executor ray``: the same cells, files and figures as the local executor,
on a local Ray cluster (2 CPUs, no GPU, loopback only, one per module): resume after a killed
driver, a lost worker retried once, latency cells alone on their node, CUDA cells skipped
where the cluster has no GPU, Ctrl-C cancelling what is outstanding."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from slimbench.bench.cli import main
from slimbench.bench.orchestrate.runner import run_suite
from slimbench.bench.orchestrate.suite import load_suite

SLOT = "slimbench_latency_slot"
TESTS = Path(__file__).parent
# quality only (no latency scenario): cells pack, two at a time on 2 CPUs with threads=1
QUALITY = """
name: rq
variants:
  base: {model: reference}
  int8: {model: reference, recipe: [torch_dynamic_int8]}
  mag: {model: reference, recipe: [{prune_unstructured: {sparsity: 0.5}}]}
devices: [cpu, cuda]
threads: 1
latency: {prefill: [], decode_contexts: [], generate_prompt: 0}
tasks: [perplexity, method_name]
task_limit: 2
perplexity_limit: 2
timeout: 300
"""
# times latency: each cell must have the node to itself, although 2 CPUs fit two
LATENCY = """
name: rl
variants:
  base: {model: reference}
  int8: {model: reference, recipe: [torch_dynamic_int8]}
  mag: {model: reference, recipe: [{prune_unstructured: {sparsity: 0.5}}]}
devices: [cpu]
threads: 1
latency: {prefill: [8], decode_contexts: [], generate_prompt: 0, repeats: 1, min_seconds: 0}
tasks: []
timeout: 300
"""


def _suite(tmp_path: Path, text: str, *replace: tuple[str, str]) -> Path:
    for old, new in replace:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def _cells(run: Path) -> dict[str, dict]:
    return {p.name.removesuffix(".json"): json.loads(p.read_text())
            for p in (run / "cells").glob("*.json")}


def _span(cell: dict) -> tuple[datetime, datetime]:
    ex = cell["environment"]["executor"]
    return datetime.fromisoformat(ex["started_at"]), datetime.fromisoformat(ex["ended_at"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids(marks: Path, cell: str) -> list[int]:
    path = marks / f"{cell}.attempts"
    return [int(x) for x in path.read_text().split()] if path.is_file() else []


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _hook(marks: Path) -> tuple[str, dict]:
    return ("ray_cells:markers", {"dir": str(marks)})


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module: 2 CPUs, no GPU, the latency slot, bound to
    loopback; its workers import the test hooks (tests/ on their PYTHONPATH)."""
    # read when Ray is imported: listen on loopback only, send no usage statistics
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), old) if p)
    try:  # the raylet, and every worker it starts, inherit this environment
        ray.init(num_cpus=2, num_gpus=0, resources={SLOT: 1}, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One artifact store for the module: each artifact is built once."""
    return tmp_path_factory.mktemp("store")


def test_without_ray_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    suite = _suite(tmp_path, QUALITY)
    rc = main(["run", str(suite), "--out", str(tmp_path / "run"), "--executor", "ray"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--executor ray needs Ray" in err and "pip install 'slimbench[ray]'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,msg", [
    (["--address", "auto"], "--address applies to --executor ray"),
    (["--artifact-store", "s"], "--artifact-store applies to --executor ray"),
    (["--executor", "ray", "--cache", "c", "--artifact-store", "s"], "give one of them"),
    (["--executor", "ray", "--address", "http://head:6379"], "--address 'http://head:6379'"),
    (["--executor", "ray", "--address", "head:99999"], "HOST:PORT"),
    (["--connect-timeout", "5"], "--connect-timeout applies to --executor ray"),
    (["--executor", "ray", "--connect-timeout", "5"], "--connect-timeout applies with --address"),
    (["--executor", "ray", "--address", "auto", "--connect-timeout", "0"],
     "--connect-timeout must be in (0, 3600] seconds, got 0"),
])
def test_run_flags_one_clear_error(tmp_path, capsys, argv, msg):
    suite = _suite(tmp_path, QUALITY)
    rc = main(["run", str(suite), "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _run_cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """``slimbench run --executor ray`` in its own process: should the connection hang again,
    the test fails on this timeout instead of hanging the test run."""
    suite = _suite(tmp_path, QUALITY)
    return subprocess.run([sys.executable, "-m", "slimbench.bench.cli", "run", str(suite),
                           "--out", str(tmp_path / "run"), "--executor", "ray", *argv],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_closed_port_one_line_at_once(tmp_path, scheme):
    """Nothing listens: refused by the TCP probe, before Ray (which would retry for many
    minutes) is asked; ray:// the same (ray[client] is installed by the extra)."""
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port that was free a moment ago: closed now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"{scheme}127.0.0.1:{port}"
    proc = _run_cli(tmp_path, "--address", address, "--connect-timeout", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"slimbench: error: cannot connect to the Ray cluster at {address}: nothing accepts "
        f"connections on port {port} there (Connection refused); is Ray running on that "
        "node, and is this the address `ray start --head` printed?"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_silent_address_given_up_after_connect_timeout(tmp_path, scheme):
    """A port that accepts TCP but never answers as Ray (here: a socket nobody reads): Ray's
    own wait is cut off at --connect-timeout."""
    pytest.importorskip("ray")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes into the backlog; nothing answers
        address = f"{scheme}127.0.0.1:{silent.getsockname()[1]}"
        proc = _run_cli(tmp_path, "--address", address, "--connect-timeout", "2")
    assert proc.returncode == 2
    # the last line (Ray's C++ core may log its own retries to stderr before it)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"slimbench: error: cannot connect to the Ray cluster at {address}: no answer within "
        "2 s (--connect-timeout S waits longer)")
    assert "ray[client]" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_suite_the_cluster_cannot_run_is_refused(tmp_path, monkeypatch):
    """Checked against what the nodes offer before anything is written."""
    pytest.importorskip("ray")
    from slimbench.bench.orchestrate import ray_cluster
    from slimbench.bench.orchestrate.ray_executor import RayExecutor
    from slimbench.errors import UsageError

    nodes = (ray_cluster.Node(id="n1", ip="10.0.0.1", resources={"CPU": 4.0}),)
    monkeypatch.setattr(ray_cluster, "connect", lambda *a: False)
    monkeypatch.setattr(ray_cluster, "cluster", lambda ray: ray_cluster.Cluster(nodes, None))
    run = tmp_path / "run"
    cases = [(LATENCY, (), f"no node of the cluster offers it: start each node with `ray "
                           f"start ... --resources='{{\"{SLOT}\": 1}}'`"),
             (QUALITY, (("threads: 1", "threads: 8"),), "threads=8 needs a node with 8 CPUs"),
             (QUALITY, (("[cpu, cuda]", "[cpu, 'cuda:1']"),), "name the device cuda")]
    for text, replace, msg in cases:
        with pytest.raises(UsageError, match=re.escape(msg)):
            run_suite(load_suite(_suite(tmp_path, text, *replace)), run,
                      cache=tmp_path / "store", executor=RayExecutor("auto"))
        assert not run.exists()


def test_node_checks_the_artifact_it_reads(tmp_path):
    """What a node does before it measures: the cache's verification, where the files are
    read (a store that is not mounted there, or that holds other bytes, fails the cell)."""
    from slimbench.bench.orchestrate.ray_task import check_artifact
    from slimbench.compress.artifact import finish_manifest

    art = tmp_path / "k-step"
    art.mkdir()
    (art / "model.safetensors").write_bytes(b"weights")
    finish_manifest(art, {"recipe": ["step"]})
    assert check_artifact(str(art)) is None
    assert check_artifact("reference") is None and check_artifact("shape:gpt2") is None
    missing = check_artifact(str(tmp_path / "elsewhere"))
    assert "is not on node" in missing and "--artifact-store DIR" in missing
    copy = tmp_path / "copy"  # a store whose bytes differ, sizes equal: the full hash finds it
    copy.mkdir()
    (copy / "manifest.json").write_bytes((art / "manifest.json").read_bytes())
    (copy / "model.safetensors").write_bytes(b"WEIGHTS")
    assert "model.safetensors's sha256 differs from the manifest's" in check_artifact(str(copy))


@pytest.mark.slow
def test_quality_identical_to_local_and_cuda_skipped(cluster, store, tmp_path, capsys):
    suite = _suite(tmp_path, QUALITY)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["run", str(suite), "--out", str(local), "--cache", str(store)]) == 0
    assert main(["run", str(suite), "--out", str(remote), "--executor", "ray",
                 "--artifact-store", str(store)]) == 0
    assert "no CUDA GPU in the Ray cluster" in capsys.readouterr().out
    a, b = _cells(local), _cells(remote)
    assert sorted(a) == sorted(b) == sorted(f"{v}--{d}" for v in ("base", "int8", "mag")
                                            for d in ("cpu", "cuda"))
    node = cluster.get_runtime_context().get_node_id()
    for cid in ("base--cpu", "int8--cpu", "mag--cpu"):
        assert a[cid]["status"] == b[cid]["status"] == "ok"
        assert set(a[cid]) == set(b[cid]) and set(a[cid]["cell"]) == set(b[cid]["cell"])
        assert a[cid]["cell"]["content_key"] == b[cid]["cell"]["content_key"]
        assert set(a[cid]["quality"]) == {"perplexity", "method_name"}
        for task in a[cid]["quality"]:
            qa, qb = dict(a[cid]["quality"][task]), dict(b[cid]["quality"][task])
            qa.pop("seconds"), qb.pop("seconds")
            assert qa == qb, (cid, task)  # every figure, interval and per-metric score
        examples = f"cells/{cid}.examples.jsonl"
        assert (local / examples).read_bytes() == (remote / examples).read_bytes()
        executor = b[cid]["environment"]["executor"]
        assert executor["name"] == "ray" and executor["node_id"] == node
        start, end = _span(b[cid])
        assert start < end
        assert "executor" not in a[cid]["environment"]  # the local executor's files as ever
    for cid in ("base--cuda", "int8--cuda", "mag--cuda"):
        assert b[cid]["status"] == "skipped"
        assert b[cid]["reason"] == "no CUDA GPU in the Ray cluster (no alive node offers a GPU)"
    # quality-only cells pack: at least two ran at once (so the latency test below can fail)
    spans = sorted(_span(b[c]) for c in ("base--cpu", "int8--cpu", "mag--cpu"))
    assert any(s2 < e1 for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False))
    for run in (local, remote):  # the same tables, report and a valid schema
        assert main(["validate", str(run)]) == 0
    assert (local / "results.csv").read_text().splitlines()[0] == \
        (remote / "results.csv").read_text().splitlines()[0]
    assert (remote / "report.html").is_file() and (remote / "summary.csv").is_file()
    assert main(["gate", "--baseline", str(local), "--candidate", str(remote)]) == 0

    # as if int8 had run on a node of another CPU: its memory is no longer compared with its
    # baseline's (no Δ in the summary, a note in the report, "not compared" in the gate),
    # while its quality still is
    path = remote / "cells" / "int8--cpu.json"
    cell = json.loads(path.read_text())
    cell["environment"]["cpu"]["model"] = "Another CPU"
    path.write_text(json.dumps(cell))
    capsys.readouterr()
    assert main(["report", str(remote)]) == 0
    import pandas as pd

    summary = pd.read_csv(remote / "summary.csv").set_index("variant")
    assert pd.isna(summary.loc["int8", "Δ peak_rss_bytes"])
    assert summary.loc["mag", "Δ peak_rss_bytes"] == summary.loc["mag", "Δ peak_rss_bytes"]
    assert summary.loc["int8", "Δ perplexity.perplexity"] > 0
    assert "cells measured in different environments" in (remote / "report.html").read_text()
    main(["gate", "--baseline", str(local), "--candidate", str(remote)])
    gate = capsys.readouterr().out
    assert "not compared: measured in another environment (cpu:" in gate


@pytest.mark.slow
def test_lost_worker_retried_once_then_failed(cluster, store, tmp_path):
    from slimbench.bench.orchestrate.ray_executor import RayExecutor

    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "base--cpu.die").write_text("")  # every attempt: retried once, then failed
    (marks / "int8--cpu.die-once").write_text("")  # the retry succeeds
    suite = load_suite(_suite(tmp_path, QUALITY, ("[cpu, cuda]", "[cpu]")))
    results = run_suite(suite, tmp_path / "run", cache=store, say=lambda _: None,
                        executor=RayExecutor(worker_hook=_hook(marks)), show_progress=False)
    status = {r.cell.id: r for r in results}
    assert [status[c].status for c in ("base--cpu", "int8--cpu", "mag--cpu")] == \
        ["failed", "ok", "ok"]
    reason = status["base--cpu"].reason
    assert reason.startswith("lost its Ray worker twice (Ray retried the cell once)")
    assert "WorkerCrashedError" in reason
    assert len(_pids(marks, "base--cpu")) == 2  # the first attempt and one retry, no more
    assert len(_pids(marks, "int8--cpu")) == 2 and len(_pids(marks, "mag--cpu")) == 1
    written = json.loads((tmp_path / "run" / "cells" / "base--cpu.json").read_text())
    assert written["status"] == "failed" and written["reason"] == reason


@pytest.mark.slow
def test_latency_cells_never_overlap_on_a_node(cluster, store, tmp_path):
    from slimbench.bench.orchestrate.ray_executor import RayExecutor
    from slimbench.fingerprint import fingerprint
    from slimbench.schema import Environment

    suite = load_suite(_suite(tmp_path, LATENCY))
    results = run_suite(suite, tmp_path / "run", cache=store, say=lambda _: None,
                        executor=RayExecutor(), show_progress=False)
    assert [r.status for r in results] == ["ok"] * 3
    by_node: dict[str, list] = {}
    for r in results:
        assert r.latency.scenarios and fingerprint(r.environment) is not None
        executor = Environment.from_dict(r.environment).executor
        by_node.setdefault(executor.node_id, []).append(_span(r.to_dict()))
    for spans in by_node.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end  # the next latency cell began after the last one ended


@pytest.mark.slow
def test_resume_after_killed_driver(cluster, store, tmp_path):
    from slimbench.bench.orchestrate.ray_executor import RayExecutor

    suite_path = _suite(tmp_path, QUALITY, ("[cpu, cuda]", "[cpu]"), ("threads: 1",
                                                                      "threads: 2"))
    run, marks = tmp_path / "run", tmp_path / "marks"
    marks.mkdir()
    (marks / "int8--cpu.sleep").write_text("120")  # threads 2: one cell at a time, in order
    address = cluster.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, str(TESTS / "ray_driver.py"), str(suite_path),
                               str(run), str(store), address, str(marks)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: (run / "cells" / "base--cpu.json").is_file()
                  and _pids(marks, "int8--cpu") or driver.poll() is not None, 120,
                  "the first cell to finish")
        assert driver.poll() is None, driver.stderr.read().decode()
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    first = (run / "cells" / "base--cpu.json").read_bytes()
    assert not (run / "cells" / "int8--cpu.json").exists()
    sleeper = _pids(marks, "int8--cpu")[0]
    _wait_for(lambda: not _alive(sleeper), 30, "the killed driver's cell to end")

    (marks / "int8--cpu.sleep").unlink()
    results = run_suite(load_suite(suite_path), run, resume=True, cache=store,
                        say=lambda _: None, show_progress=False,
                        executor=RayExecutor(worker_hook=_hook(marks)))
    assert [r.status for r in results] == ["ok"] * 3
    assert (run / "cells" / "base--cpu.json").read_bytes() == first  # finished: not redone
    assert len(_pids(marks, "base--cpu")) == 1 and len(_pids(marks, "mag--cpu")) == 1
    assert len(_pids(marks, "int8--cpu")) == 2  # cut short with its driver, then measured


@pytest.mark.slow
def test_ctrl_c_cancels_outstanding_cells(cluster, store, tmp_path):
    # a real Ctrl-C (SIGINT, as a terminal sends it) to a driver process: it cancels every
    # cell still queued or running (their workers end, the queued one never starts) and
    # writes no result for them. (In the test process itself a simulated interrupt proved
    # unreliable in CI: the driver's own process is what a user interrupts anyway.)
    suite_path = _suite(tmp_path, QUALITY, ("[cpu, cuda]", "[cpu]"))
    run, marks = tmp_path / "run", tmp_path / "marks"
    marks.mkdir()
    for cell in ("base--cpu", "int8--cpu"):  # both may run (2 CPUs), mag waits for a CPU
        (marks / f"{cell}.sleep").write_text("120")
    address = cluster.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, str(TESTS / "ray_driver.py"), str(suite_path),
                               str(run), str(store), address, str(marks)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # one running cell is enough: the three are outstanding either way
        _wait_for(lambda: _pids(marks, "base--cpu") or _pids(marks, "int8--cpu")
                  or driver.poll() is not None, 120, "a cell to start")
        assert driver.poll() is None, driver.stderr.read().decode()
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
        driver.wait()
    assert driver.returncode != 0
    assert "cancelled 3 cell(s)" in out.decode(), (out.decode(), err.decode()[-2000:])
    assert "KeyboardInterrupt" in err.decode()
    workers = _pids(marks, "base--cpu") + _pids(marks, "int8--cpu")
    _wait_for(lambda: not any(map(_alive, workers)), 30, "the cancelled cells' workers to end")
    time.sleep(3)  # the queued cell would have started by now, had it not been cancelled
    assert not _pids(marks, "mag--cpu")
    assert not list((run / "cells").glob("*.json"))

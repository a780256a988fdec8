"""Cell isolation, the memory taxonomy and environment capture."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from slimbench.bench.measure import environment
from slimbench.bench.measure.isolation import run_isolated
from slimbench.bench.measure.memory import FIELDS, snapshot
from slimbench.compress.loader import load_artifact
from slimbench.schema import CellResult, Environment, Git, SchemaError


@pytest.fixture(autouse=True)
def _cells_importable(monkeypatch):
    # spawned children inherit sys.path: this makes tests/isolation_cells.py importable there
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def test_isolated_cell_returns_its_result():
    r = run_isolated("isolation_cells:ok", {"x": 21}, timeout=120)
    assert r.status == "ok" and r.result["double"] == 42
    assert r.result["memory"].peak_rss_bytes > 10 * 2**20  # an interpreter at least


@pytest.mark.slow
def test_failing_cells_fail_alone_with_their_reason():
    cells = [("isolation_cells:hard_exit", {}, 120), ("isolation_cells:sleeps", {"seconds": 30}, 3),
             ("isolation_cells:raises", {}, 120), ("isolation_cells:killed", {}, 120),
             ("isolation_cells:ok", {"x": 1}, 120)]
    results = [run_isolated(t, kw, timeout=to) for t, kw, to in cells]
    assert [r.status for r in results] == ["failed"] * 4 + ["ok"]
    assert results[0].reason == "exited with status 3 before returning a result"
    assert results[1].reason.startswith("timeout: still running after 3 s")
    assert results[1].seconds < 15
    assert results[2].reason == "ValueError: bad cell config"
    assert results[3].reason.startswith("killed by SIGKILL")
    assert results[4].result["double"] == 2


def test_memory_fields_present_positive_and_documented():
    info = load_artifact("reference").info
    snap = snapshot(info, "cpu")
    for key in ("peak_rss_bytes", "rss_bytes", "model_bytes_on_disk", "parameters",
                "nonzero_parameters"):
        assert getattr(snap, key) > 0, key
    assert snap.peak_rss_bytes >= snap.rss_bytes
    assert {k for k, v in snap.to_dict().items() if v is not None} <= set(FIELDS)
    readme = (Path(__file__).parent.parent / "docs" / "measurements.md").read_text()
    for field in FIELDS:  # defined once in bench/measure/memory.py, listed in the docs
        assert re.search(rf"`{field}`", readme), field


def _cpuinfo_flags() -> set[str] | None:
    """The kernel's CPU flags (x86 Linux: the first `flags` line); None where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(m.group(1).split()) if m else None


def _git(*args: str) -> str | None:
    """``git args`` in the folder of the installed environment module; None outside a checkout."""
    try:
        return subprocess.run(["git", "-C", str(Path(environment.__file__).parent), *args],
                              check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def test_environment_capture():
    env = environment.capture(bandwidth=True, seeds={"inputs": 0})
    assert env.cpu.cores >= 1 and env.ram_bytes > 2**30
    flags = _cpuinfo_flags()
    if flags is None:
        assert env.cpu.flags is None
    else:  # each recorded ISA flag is what the kernel reports, present or absent
        assert env.cpu.flags == {f: f in flags for f in environment.CPU_FLAGS}
        assert set(environment.CPU_FLAGS) >= {"avx2", "avx512_vnni", "amx_int8"}
    assert env.memory_bandwidth_bytes_per_s > 1e8
    assert env.packages["torch"] and env.seeds == {"inputs": 0}
    head = _git("rev-parse", "HEAD")
    if head is None:  # an installed wheel: no commit to record, and none invented
        assert env.git == Git(commit=None, dirty=None)
    else:  # run from a checkout: its commit, and whether tracked files differ from it
        assert env.git.commit == head.strip()
        assert re.fullmatch(r"[0-9a-f]{40}", env.git.commit)
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        assert env.git.dirty is (dirty.strip() != "")
    assert env.gpu is None or env.gpu.memory_bytes > 0


def test_environment_round_trips_and_keeps_unknown_keys():
    env = environment.capture(bandwidth=True, seeds={"inputs": 0})
    data = env.to_dict()
    assert list(data)[-1] == "memory_bandwidth_bytes_per_s"  # the key order written so far
    assert "executor" not in data and "extra" not in data
    assert Environment.from_dict(json.loads(json.dumps(data))) == env
    # without bandwidth the key is absent, as in files written before the type
    assert "memory_bandwidth_bytes_per_s" not in environment.capture().to_dict()
    # a key this version does not know (a later slimbench's) is kept, never refused
    later = data | {"numa_nodes": 2}
    assert Environment.from_dict(later).extra == {"numa_nodes": 2}
    assert Environment.from_dict(later).to_dict() == later
    with pytest.raises(SchemaError, match="environment.torch_threads"):
        Environment.from_dict(data | {"torch_threads": "two"})


def test_fingerprint_of_a_committed_baseline_cell_is_unchanged():
    """The typed reader gives each committed cell the fingerprint that its run recorded
    (results.json's environments: computed by the untyped reader of the time)."""
    from slimbench.fingerprint import fingerprint
    from slimbench.schema import load_file

    base = Path(__file__).parent.parent / "bench" / "baselines" / "demo-cpu"
    recorded = json.loads((base / "results.json").read_text())["environments"]
    cells = [load_file(p, "cell") for p in sorted((base / "cells").glob("*.json"))]
    ok = [c for c in cells if c.status == "ok"]
    assert ok and {c.cell.id for c in ok} == set(recorded)
    for c in ok:
        env = Environment.from_dict(c.environment)
        assert env.to_dict() == c.environment  # read and written back: the same record
        assert fingerprint(env) == fingerprint(c.environment) == recorded[c.cell.id]


@pytest.mark.cuda
def test_cuda_memory_fields():
    loaded = load_artifact("reference", __import__(
        "slimbench.compress.loader", fromlist=["LoadOptions"]).LoadOptions(device="cuda"))
    snap = snapshot(loaded.info, "cuda")
    assert snap.cuda_max_allocated_bytes > 0
    assert snap.cuda_max_reserved_bytes >= snap.cuda_max_allocated_bytes


@pytest.mark.slow
def test_latency_cell_in_its_own_process():
    cfg = {"prefill": [16], "decode_contexts": [16], "new_tokens": 4, "generate_prompt": 8,
           "batches": [1, 2], "repeats": 2, "min_seconds": 0.0}
    r = run_isolated("slimbench.bench.measure.cell:latency_cell",
                     {"model": "reference", "threads": 1, "config": cfg}, timeout=300)
    assert r.status == "ok", r.reason
    cell = CellResult.from_dict(r.result.to_dict())  # the results schema, checked
    scenarios = cell.latency.scenarios
    kinds = [s.scenario for s in scenarios]
    assert kinds == ["prefill", "decode", "generate", "prefill", "prefill"]
    decode, gen = scenarios[1], scenarios[2]
    # per-token samples of the timed repeats
    assert decode.measurement("decode_ms_per_token").n == 4 * 2
    assert decode.derived["floor_fraction"] > 0
    assert gen.measurement("ttft_ms").median > 0 and gen.measurement("tokens_per_s").median > 0
    sweep = scenarios[3:]
    assert [s.params["batch"] for s in sweep] == [1, 2] and sweep[1].tag == "16x2"
    assert sweep[1].derived["tokens_per_s"] == pytest.approx(
        2 * 16 / (sweep[1].measurement("prefill_ms").median / 1e3))
    assert cell.memory.peak_rss_bytes > cell.memory.model_bytes_on_disk
    assert cell.threads == 1 and cell.environment["torch_threads"] == 1
    assert cell.artifact.weights_sha256 and cell.cell.backend == "torch"

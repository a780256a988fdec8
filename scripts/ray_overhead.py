r"""Wall time of one quality-only suite under the local executor and under ``--executor ray``,
interleaved (local, ray, local, ray, ...), their ratio, and Ray's start-up cost on its own.

    python scripts/ray_overhead.py                       # 6 cells, 2 rounds, threads 2
    python scripts/ray_overhead.py --rounds 3 --task-limit 40 --out runs/ray-overhead

Each run is a fresh ``slimbench run`` process (what a user runs), timed from start to exit;
artifacts are built before the first run into one store that every run reads, so no run pays
for a build. Interleaving spreads a shared host's drift over both executors alike. Ray's
start-up is measured apart, also once per round: ``ray.init`` of a local cluster as slimbench
starts it, the first task (a worker process started), and ``ray.shutdown``. Every run's
quality figures must be identical (the executors measure the same thing).

Writes ``<out>/overhead.json`` and prints a table; exits 1 when the ratio of the median wall
times (ray / local) exceeds ``--max-ratio`` (default 1.2). Run it on an otherwise idle
machine: on a loaded one the figures mean little.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from slimbench import atomic

SUITE = """\
name: ray-overhead
variants:
  baseline: {{model: reference}}
  torch-int8: {{model: reference, recipe: [torch_dynamic_int8]}}
  magnitude-50: {{model: reference, recipe: [{{prune_unstructured: {{sparsity: 0.5}}}}]}}
  nm-2-4: {{model: reference, recipe: [{{prune_unstructured: {{n_m: "2:4"}}}}]}}
  ort-fp32: {{model: reference, recipe: [export_onnx]}}
  ort-int8: {{model: reference, recipe: [export_onnx, ort_dynamic_int8]}}
devices: [cpu]
threads: {threads}
latency: {{prefill: [], decode_contexts: [], generate_prompt: 0}}
tasks: [perplexity, method_name]
task_limit: {task_limit}
perplexity_limit: {perplexity_limit}
timeout: 1800
"""

# Ray's start-up as the executor does it (loopback cluster, quiet), timed in a fresh process
STARTUP = """\
import json, time
from slimbench.bench.orchestrate import ray_cluster
ray_cluster.prepare_local_cluster()
t0 = time.perf_counter()
ray = ray_cluster.import_ray()
t1 = time.perf_counter()
ray_cluster.connect(ray, None, 0)
t2 = time.perf_counter()
ray.get(ray.remote(lambda: None).remote())
t3 = time.perf_counter()
ray.shutdown()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "init_s": t2 - t1, "first_task_s": t3 - t2,
                  "shutdown_s": t4 - t3, "total_s": t4 - t0}))
"""


def build(suite_path: Path, store: Path) -> None:
    """Every artifact of the suite, into the store (untimed)."""
    from slimbench.bench.orchestrate.suite import load_suite
    from slimbench.compress.cache import ArtifactCache
    from slimbench.log import setup_logging

    setup_logging(0)  # the builds' library chatter, as quiet as slimbench's own
    cache = ArtifactCache(store, say=lambda s: print(f"  build: {s}", file=sys.stderr))
    for v in load_suite(suite_path).variants:
        cache.build(v.model, v.recipe, v.name)


def timed_run(suite_path: Path, out: Path, store: Path, ray: bool) -> float:
    cmd = [sys.executable, "-m", "slimbench.bench.cli", "run", str(suite_path), "--out",
           str(out)]
    cmd += ["--executor", "ray", "--artifact-store", str(store)] if ray else \
        ["--cache", str(store)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall


def startup() -> dict:
    done = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"Ray start-up check failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def figures(run: Path) -> tuple[dict, float]:
    """Quality values per cell (all must be ok), and the cells' summed process seconds."""
    quality, seconds = {}, 0.0
    for path in sorted((run / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        if cell["status"] != "ok":
            sys.exit(f"{path}: {cell['status']}: {cell.get('reason')}")
        quality[cell["cell"]["id"]] = {t: q["value"] for t, q in cell["quality"].items()}
        seconds += cell["seconds"]
    return quality, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ap.add_argument("--out", type=Path, default=Path(f"runs/ray-overhead-{stamp}"))
    ap.add_argument("--rounds", type=int, default=2, help="local+ray pairs (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="the suite's threads (default 2)")
    ap.add_argument("--task-limit", type=int, default=20)
    ap.add_argument("--perplexity-limit", type=int, default=50)
    ap.add_argument("--max-ratio", type=float, default=1.2)
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; choose another --out")
    if args.rounds < 1:
        sys.exit("--rounds must be >= 1")
    args.out.mkdir(parents=True)
    suite_path, store = args.out / "suite.yaml", args.out / "store"
    suite_path.write_text(SUITE.format(threads=args.threads, task_limit=args.task_limit,
                                       perplexity_limit=args.perplexity_limit))
    build(suite_path, store)

    walls: dict[str, list[float]] = {"local": [], "ray": []}
    cell_seconds: dict[str, list[float]] = {"local": [], "ray": []}
    startups, reference = [], None
    for i in range(args.rounds):
        for kind in ("local", "ray"):
            run = args.out / f"{kind}-{i}"
            walls[kind].append(timed_run(suite_path, run, store, ray=kind == "ray"))
            quality, seconds = figures(run)
            cell_seconds[kind].append(seconds)
            reference = reference or quality
            if quality != reference:
                sys.exit(f"{run}: quality figures differ from the first run's")
            print(f"round {i} {kind:<5} wall {walls[kind][-1]:7.1f} s  ({len(quality)} cells, "
                  f"{seconds:.1f} s in cell processes)", flush=True)
        startups.append(startup())
        print(f"round {i} ray start-up {startups[-1]['total_s']:.1f} s "
              f"(init {startups[-1]['init_s']:.1f}, first task "
              f"{startups[-1]['first_task_s']:.1f}, shutdown "
              f"{startups[-1]['shutdown_s']:.1f})", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    ratio = med["ray"] / med["local"]
    pairs = [r / loc for loc, r in zip(walls["local"], walls["ray"], strict=True)]
    start = {k: statistics.median(s[k] for s in startups) for k in startups[0]}
    result = {"cells": len(reference), "threads": args.threads, "walls_s": walls,
              "cell_process_seconds": cell_seconds, "median_s": med, "ratio": ratio,
              "paired_ratios": pairs, "ray_startup_s": startups, "ray_startup_median_s": start,
              "max_ratio": args.max_ratio}
    atomic.write_json(args.out / "overhead.json", result)
    print(f"median wall: local {med['local']:.1f} s, ray {med['ray']:.1f} s; ratio ray/local "
          f"{ratio:.3f} (per round: {', '.join(f'{p:.3f}' for p in pairs)}; limit "
          f"{args.max_ratio:g})")
    print(f"Ray start-up (median of {len(startups)}): {start['total_s']:.1f} s = import "
          f"{start['import_s']:.1f} + init {start['init_s']:.1f} + first task "
          f"{start['first_task_s']:.1f} + shutdown {start['shutdown_s']:.1f}")
    print(f"wrote {args.out / 'overhead.json'}")
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())

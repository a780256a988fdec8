"""Bytes on disk and peak resident memory of a float model against its torch int8 artifacts
(block Linears int8; and with the embeddings int8 too), each loaded in a process of its own
by the suite's cell function (load, a 32-token prefill, 4 decode steps), alternating, as
``slimbench run`` measures a cell's memory.

    python scripts/int8_peak_rss.py [--model shape:gpt2] [--work DIR] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from slimbench.bench.measure.isolation import run_isolated
from slimbench.bench.orchestrate.runner import CELL, cell_preload
from slimbench.compress.loader import load_artifact
from slimbench.compress.steps import run_step


def peak_rss(spec: str) -> int:
    run = run_isolated(CELL, {
        "artifact": spec, "device": "cpu", "threads": 2,
        "latency": {"prefill": [32], "decode_contexts": [], "new_tokens": 4,
                    "generate_prompt": 0, "repeats": 1, "min_seconds": 0.0},
        "tasks": [], "task_limit": None, "quality": False}, preload=cell_preload("cpu"))
    if run.status != "ok":
        raise SystemExit(f"{spec}: {run.reason}")
    return run.result.result.memory.peak_rss_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shape:gpt2")
    ap.add_argument("--work", type=Path, help="folder for the two models (default: a temp one)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="int8-rss-"))
    fp32, int8, emb = work / "fp32", work / "int8", work / "int8-embeddings"
    load_artifact(args.model).model.save_pretrained(fp32, safe_serialization=True)
    run_step("torch_dynamic_int8", {}, str(fp32), int8)
    run_step("torch_dynamic_int8", {"include_embeddings": True}, str(fp32), emb)
    size = {d: sum(f.stat().st_size for f in d.glob("*.safetensors")) for d in (fp32, int8, emb)}
    for d in (fp32, int8, emb):
        print(f"bytes on disk {d.name}: {size[d]:,} ({size[d] / size[fp32]:.3f} x fp32)")
    for _ in range(args.repeats):
        for d in (fp32, int8, emb):
            print(f"peak RSS {d.name}: {peak_rss(str(d)) / 1e9:.3f} GB", flush=True)


if __name__ == "__main__":
    main()

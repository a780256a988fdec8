"""``slimbench demo``: what exists today, end to end on the embedded reference.

Loads the reference, scores every task, times prefill and decode, writes one result JSON.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from slimbench import atomic
from slimbench.bench import environment
from slimbench.bench.scenarios import decode_latency, prefill_latency
from slimbench.bench.torch_runtime import TorchRuntime
from slimbench.compress.loader import LoadOptions, load_artifact
from slimbench.tasks.generation import run_task
from slimbench.tasks.specs import TASKS

log = logging.getLogger(__name__)


def run_demo(out_dir: Path, limit: int | None, threads: int | None, device: str = "cpu",
             say=print) -> dict:
    t0 = time.perf_counter()
    n_threads = environment.set_threads(threads)
    loaded = load_artifact("reference", LoadOptions(device=device))
    info = loaded.info
    say(f"loaded the embedded reference: {info.parameters:,} parameters, "
        f"{info.bytes_on_disk / 1e6:.1f} MB safetensors, sha256 {info.weights_sha256[:12]}")
    rt = TorchRuntime(loaded)
    tasks = {}
    for name in TASKS.names():
        res = run_task(rt, loaded.tokenizer, name, limit=None if name == "perplexity" else limit,
                       show_progress=True)
        tasks[name] = res
        extra = (f", {res['scores']['bits_per_byte']:.3f} bits/byte"
                 if name == "perplexity" else "")
        say(f"task {name:<18} {res['metric']} = {res['value']:.2f}{extra}  "
            f"(n={res['n']}, {res['seconds']:.1f} s)")
    prefill = prefill_latency(rt, seq_len=128)
    decode = decode_latency(rt, context=128, new_tokens=32)
    say(f"latency (torch, {device}, {n_threads} threads, batch 1): prefill(128) "
        f"{prefill['ms']['median']:.2f} ms median; decode {decode['ms_per_token']['median']:.2f} "
        "ms/token with KV cache after 128 tokens")
    result = {
        "kind": "demo", "created": datetime.now(timezone.utc).isoformat(),
        "model": info.to_dict(), "environment": environment.capture(),
        "tasks": tasks, "latency": [prefill, decode],
        "wall_seconds": time.perf_counter() - t0,
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"demo-{stamp}.json"
    if path.exists():  # never overwrite an earlier result
        path = out_dir / f"demo-{stamp}-{time.time_ns() % 10**6}.json"
    atomic.write_json(path, result)
    say(f"wrote {path} ({result['wall_seconds']:.0f} s). Compression variants, ONNX Runtime, "
        "HTML reports and the gate: `slimbench run bench/suites/compress-reference.yaml --out "
        "runs/ref`, then `slimbench gate`.")
    return result | {"path": str(path)}

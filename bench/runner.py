"""Run a suite: build each variant's artifact once, run every cell in its own process, write
one JSON per cell as it finishes, then the results table and report.

Run directory layout::

    RUN/suite.json              the resolved suite (what was asked)
    RUN/cells/<cell>.json       one result per cell (status ok | failed | skipped, reason)
    RUN/cells/<cell>.examples.jsonl   per-example task outputs of the cell
    RUN/results.json / results.csv / summary.csv / report.html

Artifacts are cached by a hash of (input model, recipe steps and parameters, slimbench version)
under ``--cache`` (default ``RUN/../.artifacts``), so a second run, or a resumed one, reuses them.
``--resume`` skips cells whose result is already ``ok``; a failed cell never loses the others.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm import tqdm

from slimbench import __version__, atomic
from slimbench.bench.suite import Suite, Variant
from slimbench.errors import SlimbenchError, UsageError
from slimbench.log import quiet_progress


def artifact_key(model: str, steps) -> str:
    """Cache key of the artifact that ``steps`` make from ``model``."""
    blob = json.dumps({"model": model, "recipe": [list(s) for s in steps],
                       "slimbench": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_artifact(variant: Variant, cache: Path, say) -> str:
    """The spec a cell loads: the model itself, or the cached end of its recipe.

    Every prefix of a recipe is cached under its own key, so variants that share steps (export
    once, then quantize two ways) build them once. Each step writes atomically (a staging
    directory renamed into place), so a directory that exists is a finished artifact.
    """
    from slimbench.compress.steps import run_step

    parent = variant.model
    for i, (name, params) in enumerate(variant.recipe, 1):
        folder = cache / f"{artifact_key(variant.model, variant.recipe[:i])}-{name}"
        if not folder.is_dir():
            say(f"[{variant.name} {i}/{len(variant.recipe)}] {name} {params or ''} <- {parent}")
            run_step(name, params, parent, folder)
        parent = str(folder)
    return parent


def cell_id(variant: Variant, device: str) -> str:
    return f"{variant.name}--{device.replace(':', '')}"


def _write_cell(run_dir: Path, result: dict) -> None:
    cid = result["cell"]["id"]
    examples = {}
    for task, res in (result.get("quality") or {}).items():
        examples[task] = res.pop("examples", [])
    if any(examples.values()):
        lines = [json.dumps({"task": t, **ex}) for t, rows in examples.items() for ex in rows]
        atomic.write_text(run_dir / "cells" / f"{cid}.examples.jsonl", "\n".join(lines) + "\n")
    atomic.write_json(run_dir / "cells" / f"{cid}.json", result)


CELL = "slimbench.bench.cell:suite_cell"
# what every CPU cell imports anyway: the fork server imports it once (bench/isolation.py)
PRELOAD = ("torch", "transformers", "onnxruntime", "slimbench.compress.loader",
           "slimbench.bench.cell", "slimbench.bench.runtimes", "slimbench.tasks.generation")


def check_run_dir(suite: Suite, run_dir: Path, resume: bool) -> None:
    """Refuse a run directory that exists (unless resuming) or that a resumed run started
    with another suite or other overrides: cells of two configurations never mix."""
    if run_dir.exists() and not resume:
        raise UsageError(f"{run_dir} already exists; pass --resume to finish it, or choose "
                         "another run directory")
    saved = run_dir / "suite.json"
    wanted = json.loads(json.dumps(suite.to_dict()))  # tuples -> lists, as saved
    if resume and saved.is_file() and json.loads(saved.read_text()) != wanted:
        raise UsageError(f"{run_dir} was started with a different suite (or overrides); "
                         "resume it with the same ones, or choose another run directory")


def run_suite(suite: Suite, run_dir: Path, resume: bool = False, cache: Path | None = None,
              say=print, show_progress: bool = True, cell_target: str = CELL) -> list[dict]:
    """Run every (variant, device) cell; returns the cell results in suite order.

    ``cell_target`` names the function each isolated process runs (tests inject failures).
    """
    import torch

    from slimbench.bench.isolation import run_isolated

    run_dir = Path(run_dir)
    check_run_dir(suite, run_dir, resume)
    saved = run_dir / "suite.json"
    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache else run_dir.parent / ".artifacts"
    if not saved.is_file():
        atomic.write_json(saved, suite.to_dict())
    cells = [(v, d) for v in suite.variants for d in suite.devices]
    results = []
    bar = tqdm(cells, desc="cells", unit="cell", disable=quiet_progress(show_progress))
    artifacts: dict[str, str | Exception] = {}
    for variant, device in bar:
        cid = cell_id(variant, device)
        bar.set_postfix_str(cid)
        path = run_dir / "cells" / f"{cid}.json"
        if resume and path.is_file():
            previous = json.loads(path.read_text())
            if previous.get("status") == "ok":
                results.append(previous)
                continue
        head = {"cell": {"id": cid, "variant": variant.name, "model": variant.model,
                         "recipe": [s for s, _ in variant.recipe], "device": device}}
        if device.startswith("cuda") and not torch.cuda.is_available():
            result = head | {"status": "skipped", "reason": "no CUDA GPU on this machine"}
        else:
            if variant.name not in artifacts:
                try:
                    artifacts[variant.name] = build_artifact(variant, cache, say)
                except SlimbenchError as e:
                    artifacts[variant.name] = e
            artifact = artifacts[variant.name]
            if isinstance(artifact, Exception):
                result = head | {"status": "failed", "reason": f"building the artifact: "
                                                                f"{artifact}"}
            else:
                run = run_isolated(cell_target, {
                    "artifact": artifact, "device": device, "threads": suite.threads or None,
                    "latency": suite.latency, "tasks": list(suite.tasks),
                    "task_limit": suite.task_limit, "perplexity_limit": suite.perplexity_limit,
                    "quality": variant.quality},
                    timeout=suite.timeout, preload=() if device.startswith("cuda") else PRELOAD)
                head["cell"] |= {"artifact": artifact}
                if run["status"] == "ok":
                    res = run["result"]
                    head["cell"]["backend"] = res.pop("backend")
                    result = head | {"status": "ok", "seconds": run["seconds"]} | res
                else:
                    result = head | {"status": "failed", "reason": run["reason"],
                                     "seconds": run["seconds"]}
        if result["status"] == "failed":
            say(f"cell {cid}: failed: {result['reason']}")
        _write_cell(run_dir, result)
        results.append(result)
    skipped: dict[str, list[str]] = {}
    for r in results:
        if r["status"] == "skipped":
            skipped.setdefault(r["reason"], []).append(r["cell"]["id"])
    for reason, ids in skipped.items():
        say(f"{len(ids)} cell(s) skipped, {reason}: {', '.join(ids)}")
    return results

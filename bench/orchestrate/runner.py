"""Run a suite: build each variant's artifact once, run every cell in its own process, write
one JSON per cell as it finishes, then the results table and report.

Run directory layout::

    RUN/suite.json              the resolved suite (what was asked)
    RUN/cells/<cell>.json       one result per cell (status ok | failed | skipped, reason)
    RUN/cells/<cell>.examples.jsonl   per-example task outputs of the cell
    RUN/results.json / results.csv / summary.csv / report.html

Artifacts are cached by content (``compress/cache.py``: input weights, step, config, code
versions) under ``--cache`` (default ``RUN/../.artifacts``), verified before use, so a second
run, a resumed one or a concurrent one reuses them. ``--resume`` skips cells whose result is
already ``ok``. Anything that goes wrong while building a variant's artifact or running its
cell fails that variant's cells, with the reason in their files; the other cells run.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from tqdm import tqdm

from slimbench import atomic
from slimbench.bench.orchestrate.suite import Suite, Variant
from slimbench.errors import SlimbenchError, UsageError
from slimbench.log import quiet_progress


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


def _build(cache, variant: Variant) -> str | Exception:
    """The variant's artifact path, or what went wrong building it: any exception fails
    this variant (and those sharing the failed step), never the run."""
    try:
        return cache.build(variant.model, variant.recipe, variant.name)
    except SlimbenchError as e:
        return e
    except Exception as e:  # a bug or a library error in one step must not end the run
        wrapped = RuntimeError(f"{type(e).__name__}: {e}")
        wrapped.details = "".join(traceback.format_exception(e))[-4000:]  # for the cell file
        return wrapped


def _content_key(cache, variant: Variant) -> str | None:
    """What the variant's cells measure, by content (None if that cannot be known: the
    build will then fail with the reason)."""
    try:
        return cache.key(variant.model, variant.recipe)
    except Exception:  # noqa: BLE001 - reported by the build, which meets the same problem
        return None


CELL = "slimbench.bench.measure.cell:suite_cell"
# what every CPU cell imports anyway: the fork server imports it once (bench/isolation.py)
PRELOAD = ("torch", "transformers", "onnxruntime", "slimbench.compress.loader",
           "slimbench.bench.measure.cell", "slimbench.bench.runtimes", "slimbench.tasks.generation")


def check_run_dir(suite: Suite, run_dir: Path, resume: bool) -> None:
    """Refuse a run directory that exists (unless resuming) or that a resumed run started
    with another suite or other overrides: cells of two configurations never mix."""
    if run_dir.exists() and not resume:
        raise UsageError(f"{run_dir} already exists; pass --resume to finish it, or choose "
                         "another run directory")
    saved = run_dir / "suite.json"
    if resume and run_dir.exists() and not saved.is_file():
        # never write tables and a report into a folder that slimbench did not start
        raise UsageError(f"{run_dir} is not a slimbench run directory (no suite.json); "
                         "--resume finishes a run that `slimbench run` started")
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

    from slimbench.bench.measure.isolation import run_isolated
    from slimbench.compress.cache import ArtifactCache

    run_dir = Path(run_dir)
    check_run_dir(suite, run_dir, resume)
    saved = run_dir / "suite.json"
    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    cache = ArtifactCache(Path(cache) if cache else run_dir.parent / ".artifacts", say)
    if not saved.is_file():
        atomic.write_json(saved, suite.to_dict())
    cells = [(v, d) for v in suite.variants for d in suite.devices]
    results = []
    bar = tqdm(cells, desc="cells", unit="cell", disable=quiet_progress(show_progress))
    artifacts: dict[str, str | Exception] = {}
    keys: dict[str, str | None] = {}
    for variant, device in bar:
        cid = cell_id(variant, device)
        bar.set_postfix_str(cid)
        path = run_dir / "cells" / f"{cid}.json"
        if variant.name not in keys:
            keys[variant.name] = _content_key(cache, variant)
        if resume and path.is_file():
            previous = json.loads(path.read_text())
            if previous.get("status") == "ok" and keys[variant.name] is not None and \
                    previous["cell"].get("content_key") == keys[variant.name]:
                results.append(previous)
                continue
            if previous.get("status") == "ok":  # a resumed run never mixes two models
                say(f"cell {cid}: its model or recipe changed since it was measured; "
                    "measuring it again")
        head = {"cell": {"id": cid, "variant": variant.name, "model": variant.model,
                         "recipe": [s for s, _ in variant.recipe], "device": device,
                         "content_key": keys[variant.name]}}
        if device.startswith("cuda") and not torch.cuda.is_available():
            result = head | {"status": "skipped", "reason": "no CUDA GPU on this machine"}
        else:
            if variant.name not in artifacts:
                artifacts[variant.name] = _build(cache, variant)
            artifact = artifacts[variant.name]
            if isinstance(artifact, Exception):
                result = head | {"status": "failed", "reason": f"building the artifact: "
                                                                f"{artifact}"}
                if getattr(artifact, "details", None):
                    result["traceback"] = artifact.details
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
                    if run.get("traceback"):
                        result["traceback"] = run["traceback"]
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

"""Run a suite: build each variant's artifact once, run every cell in its own process, write
one JSON per cell as it finishes, then the results table and report.

Run directory layout::

    RUN/suite.json              the resolved suite (what was asked)
    RUN/cells/<cell>.json       one CellResult per cell (slimbench/schema/documents.py; status ok |
                                failed | skipped, reason)
    RUN/cells/<cell>.examples.jsonl   per-example task outputs of the cell
    RUN/results.json / results.csv / summary.csv / report.html
    RUN/acceptance.json / acceptance.md   the suite's acceptance criteria judged, when it has
                                any (``acceptance.py``; ``slimbench run`` judges them last)

Artifacts are cached by content (``compress/cache.py``: input weights, step, config, code
versions) under ``--cache`` (default ``RUN/../.artifacts``), verified before use, so a second
run, a resumed one or a concurrent one reuses them. ``--resume`` skips cells whose result is
already ``ok``. Anything that goes wrong while building a variant's artifact or running its
cell fails that variant's cells, with the reason in their files; the other cells run.

Where the cells run is the executor's choice: ``LocalExecutor`` (one after another on this
machine, the default) or ``ray_executor.RayExecutor`` (Ray tasks on a cluster). Both write
the same files through the helpers below.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from slimbench import atomic
from slimbench.bench.orchestrate.suite import Suite, Variant
from slimbench.errors import SlimbenchError, UsageError
from slimbench.log import quiet_progress
from slimbench.reports.consistency import check_cell
from slimbench.schema import CellInfo, CellResult, load_document, load_file
from slimbench.schema import cell_id as schema_cell_id

if TYPE_CHECKING:
    from slimbench.bench.measure.isolation import IsolatedRun


def cell_id(variant: Variant, device: str) -> str:
    return schema_cell_id(variant.name, device)


def cell_head(variant: Variant, device: str, content_key: str | None) -> CellInfo:
    """The cell's identity as the suite names it (what its file is called)."""
    return CellInfo(id=cell_id(variant, device), variant=variant.name, model=variant.model,
                    recipe=[s for s, _ in variant.recipe], device=device,
                    content_key=content_key)


def write_cell(run_dir: Path, result: CellResult, examples: list[dict]) -> None:
    """The cell's file, and first its per-example outputs beside it: the cell file names a
    file that exists when it appears."""
    name = f"{result.cell.id}.examples.jsonl"
    result.examples_sha256 = None
    if examples:
        text = "\n".join(json.dumps(ex) for ex in examples) + "\n"
        atomic.write_text(run_dir / "cells" / name, text)
        # the gate, validate and --resume check the file against this
        result.examples_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    tasks = {ex["task"] for ex in examples}
    for task, score in result.quality.items():
        score.examples_file = name if task in tasks else None
    atomic.write_json(run_dir / "cells" / f"{result.cell.id}.json", result.to_dict())


def build_artifact(cache, variant: Variant) -> str | Exception:
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


def content_key(cache, variant: Variant) -> str | None:
    """What the variant's cells measure, by content (None if that cannot be known: the
    build will then fail with the reason)."""
    try:
        return cache.key(variant.model, variant.recipe)
    except Exception:  # noqa: BLE001 - reported by the build, which meets the same problem
        return None


CELL = "slimbench.bench.measure.cell:suite_cell"
# what every CPU cell imports anyway: the fork server imports it once (bench/measure/isolation.py)
CELL_PRELOAD = ("torch", "transformers", "onnxruntime", "slimbench.compress.loader",
           "slimbench.bench.measure.cell", "slimbench.bench.runtimes", "slimbench.tasks.generation")


def check_run_dir(suite: Suite, run_dir: Path, resume: bool) -> None:
    """Refuse a run directory that exists (unless resuming) or that a resumed run started
    with another suite or other overrides: cells of two configurations never mix."""
    from slimbench.files import check_output_dir, read_json

    check_output_dir(run_dir, "run directory")
    if run_dir.exists() and not resume:
        raise UsageError(f"{run_dir} already exists; pass --resume to finish it, or choose "
                         "another run directory")
    saved = run_dir / "suite.json"
    if resume and run_dir.exists() and not saved.is_file():
        # never write tables and a report into a folder that slimbench did not start
        raise UsageError(f"{run_dir} is not a slimbench run directory (no suite.json); "
                         "--resume finishes a run that `slimbench run` started")
    wanted = json.loads(json.dumps(suite.to_dict()))  # tuples -> lists, as saved
    if resume and saved.is_file() and read_json(saved, "the run's suite file") != wanted:
        raise UsageError(f"{run_dir} was started with a different suite (or overrides); "
                         "resume it with the same ones, or choose another run directory")


@dataclasses.dataclass
class SuiteJob:
    """What an executor needs: the suite, where its files go, the artifact cache, and how to
    talk (``say`` one-line messages, a progress bar or not). ``cell_target`` names the
    function each isolated cell process runs (tests inject failures)."""

    suite: Suite
    run_dir: Path
    cache: object  # compress.cache.ArtifactCache
    resume: bool
    say: Callable[[str], None]
    show_progress: bool
    cell_target: str


class LocalExecutor:
    """Every cell on this machine, one after another, each in its own process."""

    def prepare(self, suite: Suite) -> None:
        """Nothing to check: this machine runs whatever the suite asks (CUDA cells are
        skipped where it has no GPU)."""

    def close(self) -> None:
        pass

    def run(self, job: SuiteJob) -> list[CellResult]:
        suite, run_dir, cache, say = job.suite, job.run_dir, job.cache, job.say
        cells = [(v, d) for v in suite.variants for d in suite.devices]
        bar = tqdm(cells, desc="cells", unit="cell", disable=quiet_progress(job.show_progress))
        built: dict[str, str | Exception] = {}  # variant -> artifact path, or why it has none
        keys: dict[str, str | None] = {}
        results = []
        for variant, device in bar:
            if variant.name not in keys:
                keys[variant.name] = content_key(cache, variant)
            head = cell_head(variant, device, keys[variant.name])
            bar.set_postfix_str(head.id)
            result = finished_result(run_dir, head, say) if job.resume else None
            if result is None:
                result, examples = _run_cell(suite, cache, built, variant, head,
                                             job.cell_target)
                if result.status == "failed":
                    say(f"cell {head.id}: failed: {result.reason}")
                write_cell(run_dir, result, examples)
            results.append(result)
        return results


def run_suite(suite: Suite, run_dir: Path, resume: bool = False, cache: Path | None = None,
              say=print, show_progress: bool = True, cell_target: str = CELL,
              executor=None) -> list[CellResult]:
    """Run every (variant, device) cell, writing each cell's file as it finishes.

    ``cell_target`` names the function each isolated process runs (tests inject failures).
    ``executor``: where the cells run (default ``LocalExecutor()``); it checks the suite
    against what it can run before anything is written.

    Returns:
        The cell results in suite order, as written.
    """
    from slimbench.compress.cache import ArtifactCache

    run_dir = Path(run_dir)
    check_run_dir(suite, run_dir, resume)
    # the cache first: a bad --cache must not leave a half-made run directory behind
    cache = ArtifactCache(Path(cache) if cache else run_dir.parent / ".artifacts", say)
    executor = executor or LocalExecutor()
    try:
        executor.prepare(suite)  # a cluster that cannot run the suite leaves nothing behind
        (run_dir / "cells").mkdir(parents=True, exist_ok=True)
        if not (run_dir / "suite.json").is_file():
            atomic.write_json(run_dir / "suite.json", suite.to_dict())
        # an executor returns the results typed, or as written (``CellResult.to_dict()``)
        results = [r if isinstance(r, CellResult) else load_document(r, "cell result", "cell")
                   for r in executor.run(SuiteJob(suite, run_dir, cache, resume, say,
                                                  show_progress, cell_target))]
    finally:
        executor.close()
    _say_skipped(results, say)
    return results


def finished_result(run_dir: Path, head: CellInfo, say) -> CellResult | None:
    """The cell's earlier result, if it finished ok measuring the same content (a resumed run
    never mixes two models); None to measure it (again)."""
    path = run_dir / "cells" / f"{head.id}.json"
    if not path.is_file():
        return None
    try:
        previous = load_file(path, "cell")
    except UsageError as e:
        say(f"cell {head.id}: its earlier result cannot be read ({e}); measuring it again")
        return None
    if previous.status != "ok":
        return None
    try:  # its per-example file must still back its figures (the gate will check it too)
        check_cell(previous, run_dir / "cells")
    except UsageError as e:
        say(f"cell {head.id}: {e}; measuring it again")
        return None
    if head.content_key is not None and previous.cell.content_key == head.content_key:
        return previous
    say(f"cell {head.id}: its model or recipe changed since it was measured; measuring it again")
    return None


def _run_cell(suite: Suite, cache, built: dict, variant: Variant, head: CellInfo,
              target: str) -> tuple[CellResult, list[dict]]:
    """Build the variant's artifact (once per run) and measure it in its own process: the
    cell's result and its per-example outputs."""
    import torch

    from slimbench.bench.measure.isolation import run_isolated

    if head.device.startswith("cuda") and not torch.cuda.is_available():
        return CellResult(head, "skipped", reason="no CUDA GPU on this machine"), []
    if variant.name not in built:
        built[variant.name] = build_artifact(cache, variant)
    artifact = built[variant.name]
    if isinstance(artifact, Exception):
        return build_failure(head, artifact), []
    head.artifact = artifact
    run = run_isolated(target, cell_kwargs(suite, variant, head), timeout=suite.timeout,
                       preload=cell_preload(head.device))
    return isolated_result(head, run)


def build_failure(head: CellInfo, error: Exception) -> CellResult:
    """The failed result of a cell whose artifact could not be built."""
    return CellResult(head, "failed", reason=f"building the artifact: {error}",
                      traceback=getattr(error, "details", None))


def cell_kwargs(suite: Suite, variant: Variant, head: CellInfo) -> dict[str, Any]:
    """The keyword arguments of the cell function (``bench/measure/cell.py suite_cell``), by
    name: what its isolated process is called with."""
    return {"artifact": head.artifact, "device": head.device,
            "threads": suite.threads or None, "latency": suite.latency,
            "tasks": list(suite.tasks), "task_limit": suite.task_limit,
            "perplexity_limit": suite.perplexity_limit, "quality": variant.quality}


def cell_preload(device: str) -> tuple[str, ...]:
    """Modules the cell's fork server imports: none for CUDA (a CUDA context must never be
    inherited through fork, so CUDA cells are spawned)."""
    return () if device.startswith("cuda") else CELL_PRELOAD


def isolated_result(head: CellInfo, run: IsolatedRun
                    ) -> tuple[CellResult, list[dict[str, Any]]]:
    """The cell's result from what its isolated process returned (``run_isolated``), and its
    per-example outputs (the JSON records its tasks wrote, as ``write_cell`` saves them)."""
    from slimbench.bench.measure.cell import CellOutput

    if run.status != "ok":
        return CellResult(head, "failed", reason=run.reason, seconds=run.seconds,
                          traceback=run.traceback), []
    # checked as read from a file: a cell function that returns no valid result has failed
    out = run.result.to_dict() if isinstance(run.result, CellOutput) else {}
    try:  # the cell's own identity names the artifact; the suite's names the cell
        measured = load_document(out.get("result"), f"cell {head.id}", "cell")
    except UsageError as e:  # a cell that returns no valid result has failed
        return CellResult(head, "failed", reason=str(e), seconds=run.seconds), []
    head.backend = measured.cell.backend
    return dataclasses.replace(measured, cell=head, seconds=run.seconds), \
        out.get("examples") or []


def _say_skipped(results: list[CellResult], say) -> None:
    skipped: dict[str, list[str]] = {}
    for r in results:
        if r.status == "skipped":
            skipped.setdefault(r.reason, []).append(r.cell.id)
    for reason, ids in skipped.items():
        say(f"{len(ids)} cell(s) skipped, {reason}: {', '.join(ids)}")

"""Run a suite's cells as Ray tasks (``slimbench run SUITE --executor ray``).

One cell is one Ray task (``ray_task.run_cell``), which measures the cell in its own process
on the node Ray picked, exactly as the local executor does. The driver (this process):

- checks the suite against the cluster before anything is written (``prepare``): a latency
  suite needs nodes that offer ``slimbench_latency_slot``, CPU cells a node with the suite's
  threads; CUDA cells are skipped, with the reason, where no node has a GPU;
- builds each variant's artifact once, into the artifact cache (``--artifact-store``: a
  folder every node mounts at the same path), with the cache's content keys and verification
  unchanged, and submits that variant's cells as soon as it is built, so cells run while later
  variants build; each node checks the files against their manifest before it measures;
- asks for what a cell uses: ``num_gpus=1`` (and one CPU) for a CUDA cell, the suite's
  ``threads`` CPUs for a CPU cell; a latency cell also takes all of its node's latency slot,
  so nothing else of slimbench runs beside it, while quality-only cells hold a sliver of it
  and pack (a suite with ``threads: 0`` uses every core, so each cell takes the node);
- writes each cell's file as its task returns (the local executor's files and schema), with
  ``environment["executor"]``: the node, worker, and the UTC span the task held its node;
- lets Ray retry a cell whose worker was lost once (``max_retries=1``); the second loss fails
  the cell with the reason and the others go on. A cell that fails inside its own process is
  a result, returned by a task that succeeded: never retried, as locally;
- on Ctrl-C (or any error) writes what has finished, cancels every outstanding task
  (``ray.cancel(force=True)``: its worker dies, and the cell process with it) and re-raises.

``--resume`` skips the cells that finished ok measuring the same content, as locally.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from tqdm import tqdm

from slimbench import __version__
from slimbench.bench.orchestrate import ray_cluster
from slimbench.bench.orchestrate.runner import (
    SuiteJob,
    build_artifact,
    build_failure,
    cell_head,
    cell_kwargs,
    cell_preload,
    content_key,
    finished_result,
    isolated_result,
    write_cell,
)
from slimbench.bench.orchestrate.suite import Suite, Variant
from slimbench.errors import UsageError
from slimbench.log import quiet_progress
from slimbench.schema import CellInfo, CellResult

log = logging.getLogger(__name__)
SLOT = ray_cluster.SLOT
QUALITY_SHARE = 0.01  # of a node's latency slot per quality-only cell: up to 100 pack
NO_GPU = "no CUDA GPU in the Ray cluster (no alive node offers a GPU)"
POLL_S = 0.5  # how long the driver waits for a result at a time: Ctrl-C is handled between
CANCEL_S = 15.0  # how long cancelling waits for the cancelled tasks to end


def cancel_tasks(ray, refs, deadline_s: float = CANCEL_S) -> list:
    """Force-cancel every task of ``refs`` and wait until each has ended; return those still
    not ended after ``deadline_s``.

    One ``ray.cancel`` is not enough: a task that its worker has received but not yet started
    can miss the cancel and run on to its end (ray-project/ray#24359, #46157), so the cancel
    is repeated for whatever has not ended while the deadline lasts.
    """
    import time

    pending, end = list(refs), time.monotonic() + deadline_s
    while pending:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception as e:  # noqa: BLE001 - a task that ended meanwhile
                log.info("cancelling %s: %s", ref, e)
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        if time.monotonic() > end:
            break
    return pending


def latency_suite(suite: Suite) -> bool:
    """Whether the suite's cells time anything (an empty ``latency`` config: quality only)."""
    from slimbench.bench.measure.cell import LatencyConfig

    cfg = LatencyConfig(**suite.latency)
    return bool(cfg.prefill or cfg.decode_contexts or cfg.generate_prompt)


def node_path(spec: str) -> str:
    """A local path as every node must see it (absolute: a worker's folder is not ours);
    model specs that are not paths, unchanged."""
    path = Path(spec).expanduser()
    if spec == "reference" or spec.startswith("shape:") or not path.exists():
        return spec
    return str(path.resolve())


class RayExecutor:
    """The suite's cells as Ray tasks on the cluster at ``address`` (None: one started on
    this machine, stopped at the end).

    Args:
        address: ``auto``, ``HOST:PORT`` or ``ray://HOST[:PORT]``, or None.
        artifact_store: the artifact cache folder given by the user (None: the default one,
            which nodes other than this machine see only if it is on a shared mount).
        verbosity: ``-v`` count: Ray's own log lines and the workers' output with > 0.
        worker_hook: tests only: ``(module:function, kwargs)`` each task calls first, in its
            Ray worker, with ``cell=`` its cell id (to kill the worker there).
        connect_timeout: seconds the cluster at ``address`` may take to answer
            (``--connect-timeout``; None: ``ray_cluster.CONNECT_TIMEOUT_S``).
    """

    def __init__(self, address: str | None = None, artifact_store: Path | None = None,
                 verbosity: int = 0, worker_hook: tuple[str, dict] | None = None,
                 connect_timeout: float | None = None) -> None:
        ray_cluster.check_address(address)
        if connect_timeout is not None:
            ray_cluster.check_timeout(connect_timeout, address)
        self.connect_timeout = connect_timeout or ray_cluster.CONNECT_TIMEOUT_S
        if address is None:
            ray_cluster.prepare_local_cluster()
        self.ray = ray_cluster.import_ray()
        self.address, self.store, self.verbosity = address, artifact_store, verbosity
        self.hook = list(worker_hook) if worker_hook else None
        self._connected = False
        self._remote = None
        self.cluster: ray_cluster.Cluster | None = None
        self.exclusive = False

    # -- before anything is written -------------------------------------------------------
    def prepare(self, suite: Suite) -> None:
        """Connect, and refuse a suite this cluster cannot run (one UsageError)."""
        indexed = sorted({d for d in suite.devices if d.startswith("cuda:")})
        if indexed:  # Ray gives a task its GPU; an index names a GPU of one machine
            raise UsageError(f"devices {', '.join(indexed)}: with --executor ray, name the "
                             "device cuda; Ray assigns each CUDA cell a GPU of its own")
        cluster = self.connect()
        latency = latency_suite(suite)
        # a cell that times something, or that uses every core, must have its node alone
        self.exclusive = latency or not suite.threads
        why = ("times latency" if latency else "has threads: 0 (every core of a node)")
        if self.exclusive and not cluster.has(SLOT):
            raise UsageError(
                f"the suite {why}, so each cell needs a node to itself, which slimbench "
                f"claims through the custom resource {SLOT}; no node of the cluster offers "
                f"it: start each node with `ray start ... --resources='{{\"{SLOT}\": 1}}'`")
        cpus = suite.threads or 1
        if "cpu" in suite.devices and cluster.most_cpus(self.exclusive) < cpus:
            raise UsageError(f"the suite's threads={cpus} needs a node with {cpus} CPUs"
                             f"{' and the ' + SLOT if self.exclusive else ''}; the largest "
                             f"has {cluster.most_cpus(self.exclusive):g} (lower threads, or "
                             "add such a node)")
        self.warn_without_store("cells")
        self._remote = self.ray.remote(_run_cell_task())

    def connect(self) -> ray_cluster.Cluster:
        """Connect, and read what the cluster's alive nodes offer."""
        self._connected = ray_cluster.connect(self.ray, self.address, self.verbosity,
                                             self.connect_timeout)
        self.cluster = ray_cluster.cluster(self.ray)
        log.info("ray: %s", self.cluster.describe())
        return self.cluster

    def warn_without_store(self, what: str) -> None:
        """Other nodes read artifacts built here only through a folder they all mount."""
        if self.store is None and self.cluster.other_nodes():
            log.warning("the Ray cluster has nodes besides this machine and no "
                        "--artifact-store was given: they can read artifacts built here only "
                        f"if the cache folder is on a mount they share (else their {what} "
                        "fail with the reason)")

    def close(self) -> None:
        if self._connected:
            self.ray.shutdown()
            self._connected = False

    # -- the run ------------------------------------------------------------------------------
    def run(self, job: SuiteJob) -> list[CellResult]:
        suite, say = job.suite, job.say
        keys = {v.name: content_key(job.cache, v) for v in suite.variants}
        order, done = [], {}  # cell ids in suite order; id -> result as written
        todo: dict[str, list[CellInfo]] = {}  # variant -> its cells to measure
        for variant in suite.variants:
            for device in suite.devices:
                head = cell_head(variant, device, keys[variant.name])
                order.append(head.id)
                earlier = finished_result(job.run_dir, head, say) if job.resume else None
                if earlier is not None:
                    done[head.id] = earlier
                elif device.startswith("cuda") and not self.cluster.has("GPU"):
                    done[head.id] = self._write(job, CellResult(head, "skipped",
                                                                reason=NO_GPU), [])
                else:
                    todo.setdefault(variant.name, []).append(head)
        bar = tqdm(total=len(order), initial=len(done), desc="cells", unit="cell",
                   disable=quiet_progress(job.show_progress))
        running: dict = {}  # ObjectRef -> its cell
        try:
            for variant in suite.variants:
                if variant.name in todo:
                    self._collect(job, running, done, bar, wait=False)
                    self._start(job, variant, todo[variant.name], running, done, bar)
            while running:
                self._collect(job, running, done, bar, wait=True)
        except BaseException:  # Ctrl-C above all: nothing may run on without its driver
            self._stop(job, running, done, bar)
            raise
        finally:
            bar.close()
        return [done[cid] for cid in order]

    def _start(self, job: SuiteJob, variant: Variant, heads: list[CellInfo], running: dict,
               done: dict, bar) -> None:
        """Build the variant's artifact here (once: the cache) and submit its cells."""
        artifact = build_artifact(job.cache, variant)
        for head in heads:
            if isinstance(artifact, Exception):
                done[head.id] = self._write(job, build_failure(head, artifact), [])
                bar.update(1)
                continue
            head.artifact = node_path(artifact)
            spec = {"cell": head.id, "target": job.cell_target,
                    "kwargs": cell_kwargs(job.suite, variant, head),
                    "timeout": job.suite.timeout, "preload": list(cell_preload(head.device)),
                    "slimbench": __version__, "hook": self.hook}
            ref = self._remote.options(name=f"slimbench {head.id}",
                                       **self.resources(job.suite, head.device)).remote(spec)
            running[ref] = head

    def resources(self, suite: Suite, device: str) -> dict[str, int | bool | dict[str, float]]:
        """The Ray task options of a cell on ``device``: keyword arguments of Ray's
        ``.options()``, by their Ray names."""
        opts: dict[str, int | bool | dict[str, float]] = {
            "max_retries": 1,  # a lost worker or node: once more, then the cell fails
            # the task returns every failure of the cell as a result; an exception in
            # the task itself is a bug or a broken node setup, which a retry repeats
            "retry_exceptions": False}
        if device.startswith("cuda"):
            opts |= {"num_gpus": 1, "num_cpus": 1}  # the GPU works; one core feeds it
        else:
            opts |= {"num_gpus": 0, "num_cpus": suite.threads or 1}
        share = 1.0 if self.exclusive else QUALITY_SHARE if self.cluster.has(SLOT) else None
        if share:  # without the slot anywhere no latency cell can run: nothing to keep apart
            opts["resources"] = {SLOT: share}
        return opts

    def _collect(self, job: SuiteJob, running: dict, done: dict, bar, wait: bool) -> None:
        """Write the results that are ready (waiting up to POLL_S for one if ``wait``)."""
        if not running:
            return
        ready, _ = self.ray.wait(list(running), num_returns=len(running),
                                 timeout=POLL_S if wait else 0, fetch_local=True)
        if wait and not ready:
            return
        for ref in ready:
            head = running.pop(ref)
            result, examples = self._result(head, ref)
            if result.status == "failed":
                job.say(f"cell {head.id}: failed: {result.reason}")
            done[head.id] = self._write(job, result, examples)
            bar.set_postfix_str(head.id)
            bar.update(1)

    def _result(self, head: CellInfo, ref) -> tuple[CellResult, list[dict]]:
        ray = self.ray
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the task's own code raised
            cause = e.cause if getattr(e, "cause", None) is not None else e
            return CellResult(head, "failed", reason=f"the Ray task failed: "
                              f"{type(cause).__name__}: {cause}", traceback=str(e)[-4000:]), []
        except ray.exceptions.RayError as e:  # the worker or its node was lost, twice
            first = (str(e).strip().splitlines() or [""])[0]
            return CellResult(head, "failed", reason=f"lost its Ray worker twice (Ray retried "
                              f"the cell once): {type(e).__name__}: {first}",
                              traceback=str(e)[-4000:]), []
        result, examples = isolated_result(head, out.run)
        env = dict(result.environment or {}) | {"executor": out.executor.to_dict()}
        return dataclasses.replace(result, environment=env), examples

    def _write(self, job: SuiteJob, result: CellResult, examples: list[dict]) -> CellResult:
        write_cell(job.run_dir, result, examples)
        return result

    def _stop(self, job: SuiteJob, running: dict, done: dict, bar) -> None:
        """Keep what has finished, then cancel the rest on the cluster."""
        try:
            self._collect(job, running, done, bar, wait=False)
        except BaseException as e:  # noqa: BLE001 - cancelling matters more than these
            log.warning("could not write every finished cell: %s", e)
        left = cancel_tasks(self.ray, running)
        if running:
            job.say(f"cancelled {len(running)} cell(s) still queued or running on the Ray "
                    f"cluster: {', '.join(h.id for h in running.values())}")
        if left:
            log.warning("%d cell(s) did not end within %gs of cancelling: %s", len(left),
                        CANCEL_S, ", ".join(running[r].id for r in left))


def _run_cell_task():
    """``ray_task.run_cell``, imported here so that the module stays importable without Ray
    and workers import it by name."""
    from slimbench.bench.orchestrate.ray_task import run_cell

    return run_cell

"""``slimbench search --executor ray``: stages 1-4 of the candidates as Ray tasks, side by
side on a cluster, with the decisions of a local search.

The driver (this process):

- connects, and refuses a search this cluster cannot run before anything is built: a timed
  objective needs a node that offers the latency slot (``ray_cluster.SLOT``) and the search's
  ``--threads`` CPUs (default: this machine's cores); CUDA needs a GPU;
- scores the baseline on *tune* (and later on *test*) and runs the confirmations itself;
- builds each candidate's artifact here, through the content-addressed cache
  (``--artifact-store``: a folder every node mounts at the same path), and submits its screen
  (stages 2-3, ``search_stages.Stages.screen``) as soon as it is built, so screens run while
  later candidates build. A screen asks for the threads' CPUs (a GPU for CUDA) and a sliver
  of the latency slot: screens pack beside each other, never beside an A/B;
- times the survivors (stage 4) as tasks that take a node's whole latency slot: one paired
  A/B per node at a time, both models on that node, so each ratio holds as locally;
- keeps the time budget as the local search does, at each submission: no screen starts after
  60% of ``--max-minutes``, no A/B after 85%, and an A/B is cut to what is left; at most as
  many tasks are in flight as the cluster can run at once, so queued work obeys it too;
- saves each candidate's record as its task returns (``search_state.py``), so ``--resume``
  redoes nothing already decided; a candidate's error fails that candidate only, a worker
  lost twice (Ray retries once) fails it with the reason;
- on Ctrl-C, or any error, cancels every task still queued or running.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from slimbench import __version__
from slimbench.bench.orchestrate.ray_executor import (
    CANCEL_S,
    QUALITY_SHARE,
    SLOT,
    RayExecutor,
    cancel_tasks,
    node_path,
)
from slimbench.bench.orchestrate.search_stages import OBJECTIVES, Stages
from slimbench.errors import SlimbenchError, UsageError

log = logging.getLogger(__name__)
POLL_S = 0.5  # how long the driver waits for a task at a time: Ctrl-C is handled between


def run_stage(spec: dict[str, Any]) -> tuple[Any, float, str]:
    """One candidate's stage on this node (what one Ray task runs).

    Args:
        spec: ``stage`` (``screen`` or ``latency``), ``stages`` (a ``Stages``), ``record``
            (the candidate so far), ``artifact`` (its path, absolute), ``tune`` (the
            baseline's tune records, for a screen), ``ab_seconds`` (for an A/B) and
            ``slimbench`` (the driver's version).

    Returns:
        The screened record (``screen``) or the objective's ``Speed`` or None
        (``latency``), the seconds it took here, and this node's hostname.

    Raises:
        SlimbenchError: this node cannot do it (another slimbench, an artifact not here or
            not as its manifest says); the driver fails the candidate with the reason.
    """
    import socket

    from slimbench.bench.measure import environment
    from slimbench.bench.orchestrate.ray_task import check_artifact

    t0, host = time.monotonic(), socket.gethostname()
    if spec["slimbench"] != __version__:
        raise SlimbenchError(f"node {host} has slimbench {__version__}, the driver "
                             f"{spec['slimbench']}: install the same version on every node")
    reason = check_artifact(spec["artifact"])
    if reason:
        raise SlimbenchError(reason)
    stages: Stages = spec["stages"]
    environment.set_threads(stages.threads)
    if spec["stage"] == "screen":
        out = stages.screen(spec["record"], spec["artifact"], spec["tune"])
    else:
        out = stages.measure(spec["record"], spec["artifact"], tuple(spec["ab_seconds"]))
    return out, time.monotonic() - t0, host


class RaySearchExecutor(RayExecutor):
    """The search's stages 1-4 on the Ray cluster at ``address`` (module docstring); the
    arguments are ``RayExecutor``'s."""

    running: dict  # ObjectRef -> (the candidate's record, its stage)

    def prepare(self, search) -> None:  # type: ignore[override]
        """Connect, and refuse a search this cluster cannot run (one UsageError)."""
        cfg = search.cfg
        if cfg.device.startswith("cuda:"):  # Ray gives a task its GPU
            raise UsageError(f"--device {cfg.device}: with --executor ray, name the device "
                             "cuda; Ray assigns each task a GPU of its own")
        cluster = self.connect()
        self.threads, self.cuda = search.threads, cfg.device.startswith("cuda")
        timed = OBJECTIVES[cfg.objective][0] is not None
        if self.cuda and not cluster.has("GPU"):
            raise UsageError("--device cuda: no node of the Ray cluster offers a GPU")
        if timed and not cluster.has(SLOT):
            raise UsageError(
                f"objective {cfg.objective} is timed, and each A/B needs a node to itself, "
                f"which slimbench claims through the custom resource {SLOT}; no node of the "
                f"cluster offers it: start each node with `ray start ... "
                f"--resources='{{\"{SLOT}\": 1}}'`")
        if not self.cuda and cluster.most_cpus(timed) < self.threads:
            raise UsageError(f"--threads {self.threads} needs a node with {self.threads} CPUs"
                             f"{' and the ' + SLOT if timed else ''}; the largest has "
                             f"{cluster.most_cpus(timed):g} (lower --threads, or add such a "
                             "node)")
        self.warn_without_store("candidates")
        self.running = {}
        self._remote = self.ray.remote(run_stage)

    def close(self) -> None:
        """Cancel whatever is still queued or running, then disconnect."""
        running = getattr(self, "running", None) or {}
        if running:
            left = cancel_tasks(self.ray, running)
            log.warning("cancelled %d task(s) still queued or running on the Ray cluster: %s",
                        len(running), ", ".join(r.name for r, _ in running.values()))
            if left:
                log.warning("%d task(s) did not end within %gs of cancelling: %s", len(left),
                            CANCEL_S, ", ".join(running[r][0].name for r in left))
            self.running = {}
        super().close()

    # -- capacity ------------------------------------------------------------------------

    def slots(self, exclusive: bool) -> int:
        """How many tasks of the search's size the cluster runs at once: A/Bs, one per node
        with the latency slot (``exclusive``); screens, as many as its CPUs (GPUs) hold."""
        nodes = self.cluster.nodes
        if exclusive:
            nodes = [n for n in nodes if n.resources.get(SLOT, 0) >= 1]
            return max(1, sum(1 for n in nodes if self.cuda or
                              n.resources.get("CPU", 0) >= self.threads))
        if self.cuda:
            return max(1, int(sum(n.resources.get("GPU", 0) for n in nodes)))
        return max(1, sum(int(n.resources.get("CPU", 0) // self.threads) for n in nodes))

    def options(self, exclusive: bool) -> dict[str, Any]:
        """A task's Ray options: its CPUs (GPU), its share of the latency slot, and one retry
        of a lost worker (an exception of the task itself is the candidate's, never retried)."""
        opts: dict[str, Any] = {"max_retries": 1, "retry_exceptions": False}
        opts |= ({"num_gpus": 1, "num_cpus": 1} if self.cuda
                 else {"num_gpus": 0, "num_cpus": self.threads})
        if self.cluster.has(SLOT):
            opts["resources"] = {SLOT: 1.0 if exclusive else QUALITY_SHARE}
        return opts

    # -- the stages ----------------------------------------------------------------------

    def _submit(self, rec, stage: str, spec: dict[str, Any]) -> None:
        exclusive = stage == "latency"
        spec |= {"stage": stage, "record": rec, "slimbench": __version__}
        ref = self._remote.options(name=f"slimbench search {rec.name} {stage}",
                                   **self.options(exclusive)).remote(spec)
        self.running[ref] = (rec, stage)

    def _get(self, ref, name: str) -> tuple[Any, float]:
        """A task's outcome, or its error as the candidate's own."""
        ray = self.ray
        try:
            out, seconds, host = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the stage raised: the candidate's error
            cause = getattr(e, "cause", None)
            raise cause if isinstance(cause, Exception) else SlimbenchError(str(e)) from None
        except ray.exceptions.RayError as e:  # the worker or its node was lost, twice
            first = (str(e).strip().splitlines() or [""])[0]
            raise SlimbenchError(f"lost its Ray worker twice (Ray retried once): "
                                 f"{type(e).__name__}: {first}") from None
        log.info("%s: on %s in %.1f s", name, host, seconds)
        return out, seconds

    def _finished(self, search, wait: bool):
        """The records of the tasks that are done (waiting up to POLL_S for one if
        ``wait``), each decided and saved as the local search does."""
        if not self.running:
            return
        ready, _ = self.ray.wait(list(self.running), num_returns=len(self.running),
                                 timeout=POLL_S if wait else 0)
        for ref in ready:
            rec, stage = self.running.pop(ref)
            if stage == "screen":
                def work(r, ref=ref):
                    out, _ = self._get(ref, r.name)
                    return dataclasses.replace(out, seconds=r.seconds + out.seconds)
            else:
                def work(r, ref=ref):
                    speed, seconds = self._get(ref, r.name)
                    return search.judge(r, speed, seconds)
            yield search.stage(rec, work, stage)

    def _drain(self, search, below: int):
        """Collect finished tasks until fewer than ``below`` are in flight."""
        while len(self.running) >= below:
            yield from self._finished(search, wait=True)

    def screen(self, search, pending, tune):
        """Stages 1-3: each candidate built here, screened on a node."""
        from slimbench.bench.orchestrate.search import SCREEN_SHARE, _record

        stages = dataclasses.replace(search.stages(), model=node_path(search.cfg.model))
        window = self.slots(exclusive=False)
        for c in pending:
            yield from self._drain(search, window)
            yield from self._finished(search, wait=False)
            if search.clock.past(SCREEN_SHARE):
                yield _record(c, why="not screened: the time budget ran out")
                continue
            rec, path = search.built(c)
            if path is None:
                yield search.stage(rec, lambda r: r, "build")
                continue
            self._submit(rec, "screen", {"stages": stages, "artifact": node_path(path),
                                         "tune": tune})
        yield from self._drain(search, 1)

    def time(self, search, untimed, alive):
        """Stage 4: each survivor's A/B on a node of its own."""
        stages = dataclasses.replace(search.stages(), model=node_path(search.cfg.model))
        window = self.slots(exclusive=True)
        for r in untimed:
            yield from self._drain(search, window)
            held = search.before_timing(r, alive)
            if held is not None:
                yield held
                continue
            r = dataclasses.replace(r, status="screened")
            try:
                path = search.rebuilt(r)
            except Exception as e:  # noqa: BLE001 - the candidate's own, as stage() says
                yield search.stage(r, lambda x, e=e: _raise(e), "latency")
                continue
            self._submit(r, "latency", {"stages": stages, "artifact": node_path(path),
                                        "ab_seconds": search.ab_seconds()})
        yield from self._drain(search, 1)


def _raise(e: Exception):
    raise e

"""The node side of a suite cell on Ray: what one Ray task runs (``ray_executor.py`` submits
it). Importable without Ray; the driver wraps ``run_cell`` with ``ray.remote``.

The task measures its cell as the local runner does, in a process of its own
(``bench/measure/isolation.py``): clean memory figures, fresh thread pools, and a crash, OOM
kill or timeout fails this cell only, with the reason. The Ray worker around it only waits.
So a lost *worker* (its node gone, the worker killed) is an infrastructure fault that Ray
retries, while a cell that crashes is a measurement that failed, never retried: the local
executor would not retry it either.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from slimbench import __version__
from slimbench.bench.measure.isolation import IsolatedRun
from slimbench.schema.environment import Executor

# artifact folders this worker process has hashed in full (the cache's rule: sizes every
# time, the full sha256 once per process that reads them)
_VERIFIED: set[str] = set()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


@dataclasses.dataclass(frozen=True)
class CellTask:
    """What one Ray task returns to the driver.

    Attributes:
        run: what ``run_isolated`` returned (status, result or reason, seconds).
        executor: the node and worker, with the UTC span the task held its resources.
    """

    run: IsolatedRun
    executor: Executor


def node_record() -> Executor:
    """Which node and worker this is: saved as the cell's ``environment["executor"]``
    (without its span: ``started_at`` and ``ended_at`` are the task's)."""
    import ray

    return Executor(name="ray", node_id=ray.get_runtime_context().get_node_id(),
                    node_ip=ray.util.get_node_ip_address(), hostname=socket.gethostname(),
                    worker_pid=os.getpid(), slimbench=__version__)


def check_artifact(artifact: str) -> str | None:
    """Why this node cannot measure ``artifact`` (None when it can): a path that is not
    here, or an artifact whose files differ from its manifest. Model specs that are not
    paths (``reference``, ``shape:…``, hub ids) are resolved by the loader on the node."""
    from slimbench.compress.artifact import read_manifest, verify_files
    from slimbench.errors import SlimbenchError

    path = Path(artifact)
    if not path.is_absolute():  # the driver sends every local path absolute
        return None
    where = f"node {socket.gethostname()}"
    if not path.is_dir():
        return (f"{artifact} is not on {where}: give --artifact-store DIR on a filesystem "
                "that every node mounts at the same path")
    try:
        manifest = read_manifest(path)
    except SlimbenchError as e:
        return f"{artifact} on {where}: {e}"
    if manifest is None:  # a user's plain model folder: loaded as is, as the local runner does
        return None
    full = str(path) not in _VERIFIED
    problems = verify_files(path, manifest, full=False)
    if not problems and full:
        problems = verify_files(path, manifest, full=True)
    if problems:
        return (f"{artifact} on {where} does not match its manifest ({'; '.join(problems[:3])}"
                "): the artifact store differs between the nodes and the driver")
    _VERIFIED.add(str(path))
    return None


def _call(target: str, **kwargs) -> None:
    module, _, name = target.partition(":")
    getattr(importlib.import_module(module), name)(**kwargs)


def run_cell(spec: dict) -> CellTask:
    """Measure one cell on this node.

    Args:
        spec: ``cell`` (its id), ``target`` (the cell function, ``module:function``),
            ``kwargs`` (its arguments, with ``artifact``), ``timeout`` (seconds),
            ``preload`` (fork-server modules), ``slimbench`` (the driver's version) and
            ``hook``: ``[module:function, kwargs]`` called first with ``cell=`` (tests only:
            they make a worker die here), or None.

    Returns:
        The cell's run and ``node_record()`` with ``started_at`` and ``ended_at`` (UTC, ISO
        8601: the span the task held its resources, by this node's clock).
    """
    from slimbench.bench.measure.isolation import run_isolated

    started = time.time()
    record = node_record()
    if spec.get("hook"):
        target, kwargs = spec["hook"]
        _call(target, cell=spec["cell"], **kwargs)
    t0 = time.perf_counter()
    if spec["slimbench"] != __version__:  # another version may measure, or name, differently
        reason = (f"node {record.hostname} has slimbench {__version__}, the driver "
                  f"{spec['slimbench']}: install the same version on every node")
    else:
        reason = check_artifact(spec["kwargs"]["artifact"])
    if reason:
        run = IsolatedRun("failed", time.perf_counter() - t0, reason=reason)
    else:
        run = run_isolated(spec["target"], spec["kwargs"], timeout=spec["timeout"],
                           preload=tuple(spec["preload"]))
    return CellTask(run, dataclasses.replace(record, started_at=_iso(started),
                                             ended_at=_iso(time.time())))

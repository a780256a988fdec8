"""Run one cell in its own spawned process, with a timeout.

A crash (segfault, ``os._exit``), an out-of-memory kill or a timeout marks that cell failed
with the reason, and the caller goes on with the next cell. Spawn (not fork) gives every cell
a fresh interpreter: no torch/ORT thread pools or allocator state inherited from the parent,
and a clean peak-RSS figure.

Importing torch and transformers costs a spawned cell about 7 s on 2 cores, more than many
cells measure. With ``preload``, cells are forked from multiprocessing's fork server, a fresh
interpreter that has imported those modules and done nothing else (no thread pool, no CUDA
context, no model), so each cell still starts clean but without the imports. CUDA cells keep
plain spawn: a CUDA context must never be inherited through fork. The fork server starts with
the first such cell and keeps the environment variables of that moment for all later ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import multiprocessing as mp
import signal
import time
import traceback
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class IsolatedRun:
    """What a call in its own process came to.

    Attributes:
        status: ok (the call returned) or failed (it raised, crashed, was killed or timed out).
        seconds: wall time of the process, start to end.
        result: what the call returned (ok only): any picklable value.
        reason: why it failed, in one line (failed only).
        traceback: the end of the call's traceback, when it raised.
    """

    status: Literal["ok", "failed"]
    seconds: float
    result: Any = None
    reason: str | None = None
    traceback: str | None = None


def watch_parent(lifeline) -> None:
    """Kill this process when the parent goes away, however it dies (SIGKILL included), so a
    killed run leaves no cell running on. The parent holds the only write end of
    ``lifeline``: EOF means it is gone. (PR_SET_PDEATHSIG would watch the fork server, which
    itself stays alive while any of its children does.)"""
    import os
    import threading

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv_bytes()
        os.kill(os.getpid(), signal.SIGKILL)  # quietly: no traceback, nobody to send it to

    threading.Thread(target=watch, name="slimbench-lifeline", daemon=True).start()


def _child(target: str, kwargs: dict, conn, lifeline) -> None:
    """Child side: import ``module:function``, call it, send back ("ok", result) or the error."""
    import os

    from slimbench.log import setup_logging

    # Ctrl-C reaches the whole process group: the parent handles it and kills this cell
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch_parent(lifeline)
    setup_logging(int(os.environ.get("SLIMBENCH_VERBOSITY", "0")))  # as quiet as the parent
    try:
        module, _, name = target.partition(":")
        fn = getattr(importlib.import_module(module), name)
        message = ("ok", fn(**kwargs))
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent as a reason
        message = ("error", f"{type(e).__name__}: {e}", traceback.format_exc(limit=8))
    try:
        conn.send(message)
    except OSError:  # the parent is gone (BrokenPipe): nobody to tell, nothing to print
        pass
    finally:
        conn.close()


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _context(preload: tuple[str, ...]):
    if not preload:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))  # used when the server starts (first cell)
    return ctx


def _wait(proc, conn, deadline: float):
    """(message or None, timed out) once the child answers, dies or runs past ``deadline``."""
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return None, True
        if conn.poll(min(left, 0.5)):
            try:
                return conn.recv(), False
            except EOFError:  # died without a word
                return None, False
        if not proc.is_alive() and not conn.poll(0):
            return None, False


def run_isolated(target: str, kwargs: dict | None = None, timeout: float = 600.0,
                 preload: tuple[str, ...] = ()) -> IsolatedRun:
    """Call ``target`` (``"package.module:function"``) with ``kwargs`` in a fresh process:
    spawned, or forked from a fork server that has imported ``preload``.

    Returns:
        An ok ``IsolatedRun`` with the call's result, or a failed one with the reason;
        never raises for the child's failure. The result must be picklable (it comes back
        through a pipe).
    """
    ctx = _context(tuple(preload))
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    life_r, life_w = ctx.Pipe(duplex=False)  # we hold the writer: the child's lifeline
    proc = ctx.Process(target=_child, args=(target, kwargs or {}, child_conn, life_r),
                       daemon=True)
    t0 = time.perf_counter()
    proc.start()
    child_conn.close()  # the child holds the only writer: EOF means it is gone
    life_r.close()
    message = None
    try:
        message, timed_out = _wait(proc, parent_conn, t0 + timeout)
    finally:  # also on Ctrl-C: no cell outlives the run
        if proc.is_alive():
            proc.join(5 if message is not None else 0)
        if proc.is_alive():
            proc.kill()
        proc.join()
        life_w.close()
    seconds = time.perf_counter() - t0
    if message is not None and message[0] == "ok":
        return IsolatedRun("ok", seconds, result=message[1])
    if message is not None:
        return IsolatedRun("failed", seconds, reason=message[1], traceback=message[2])
    if timed_out:
        reason = f"timeout: still running after {timeout:g} s (killed)"
    elif proc.exitcode is not None and proc.exitcode < 0:
        name = _signal_name(proc.exitcode)
        hint = " (the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        reason = f"killed by {name}{hint}"
    else:
        reason = f"exited with status {proc.exitcode} before returning a result"
    return IsolatedRun("failed", seconds, reason=reason)

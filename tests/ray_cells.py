"""The worker hook of the Ray executor tests (``RayExecutor(worker_hook=...)``): called in the
Ray worker, before its cell, with the cell's id; what it does is steered by marker files in
``dir``, which the test writes:

- ``<cell>.attempts``: the hook appends the worker's pid, once per attempt;
- ``<cell>.die``: the worker exits at once (``os._exit``), at every attempt: a lost worker;
- ``<cell>.die-once``: the same, once (the marker is removed first);
- ``<cell>.sleep``: the worker sleeps that many seconds (a cell still running when the test
  kills its driver or interrupts the run).
"""

import os
import time
from pathlib import Path


def markers(cell: str, dir: str) -> None:
    d = Path(dir)
    with open(d / f"{cell}.attempts", "a") as f:
        f.write(f"{os.getpid()}\n")
    if (d / f"{cell}.die").exists():
        os._exit(1)
    once = d / f"{cell}.die-once"
    if once.exists():
        once.unlink()
        os._exit(1)
    sleep = d / f"{cell}.sleep"
    if sleep.exists():
        time.sleep(float(sleep.read_text() or 60))

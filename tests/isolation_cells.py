"""Cell functions the isolation tests run in spawned processes (importable by name)."""

import os
import time


def ok(x):
    from slimbench.bench.measure.memory import process_memory

    return {"double": 2 * x, "memory": process_memory()}


def hard_exit():
    os._exit(3)


def sleeps(seconds):
    time.sleep(seconds)
    return {"slept": seconds}


def raises():
    raise ValueError("bad cell config")


def killed():
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def suite_cell_or_die(**kwargs):
    """The suite cell, except that random-weight shape variants die like an OOM-killed cell."""
    if kwargs["artifact"].startswith("shape:"):
        killed()
    from slimbench.bench.measure.cell import suite_cell

    return suite_cell(**kwargs)


def record_and_sleep(**kwargs):
    """A suite cell that writes its pid where SLIMBENCH_TEST_PIDFILE says, then sleeps: the
    test kills the run meanwhile and checks that this process dies with it."""
    with open(os.environ["SLIMBENCH_TEST_PIDFILE"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(float(os.environ.get("SLIMBENCH_TEST_SLEEP", "60")))
    from slimbench.bench.measure.cell import suite_cell

    return suite_cell(**kwargs)

"""A `slimbench run --executor ray` with the worker hook of tests/ray_cells.py, run as its own
process by tests/test_ray_executor.py: a driver the test can kill.

    python ray_driver.py SUITE RUN_DIR CACHE ADDRESS MARKERS_DIR
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    import signal

    # Ctrl-C as in a terminal: a background job of a non-interactive shell (how CI may run the
    # tests) starts with SIGINT ignored, Python keeps it ignored, and so would this driver
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from slimbench.bench.orchestrate.ray_executor import RayExecutor
    from slimbench.bench.orchestrate.runner import run_suite
    from slimbench.bench.orchestrate.suite import load_suite

    suite_path, run_dir, cache, address, marks = sys.argv[1:6]
    executor = RayExecutor(address, worker_hook=("ray_cells:markers", {"dir": marks}))
    results = run_suite(load_suite(Path(suite_path)), Path(run_dir), cache=Path(cache),
                        executor=executor, show_progress=False)
    print(" ".join(f"{r.cell.id}={r.status}" for r in results))

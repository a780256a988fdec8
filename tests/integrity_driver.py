"""A `slimbench run` with test hooks, run as its own process by tests/test_integrity.py.

    python integrity_driver.py SUITE RUN_DIR CACHE [CELL_TARGET]

Registers two extra recipe steps before the run: ``sleepy`` (saves its parent unchanged,
then sleeps ``SLIMBENCH_TEST_SLEEP`` seconds: a build the test can kill midway) and ``boom``
(raises a plain RuntimeError, as a library bug would).
"""

import dataclasses
import os
import sys
import time
from pathlib import Path

from slimbench.compress.step_io import save_model
from slimbench.compress.steps import STEPS, register_step


@dataclasses.dataclass(frozen=True)
class NoConfig:
    pass


def _sleepy(parent, config, tmp: Path) -> dict:
    save_model(parent.model, parent.tokenizer, tmp)
    (tmp / "building").write_text("")
    time.sleep(float(os.environ.get("SLIMBENCH_TEST_SLEEP", "0")))
    (tmp / "building").unlink()
    return {"format": "hf", "parameters": parent.info.parameters,
            "nonzero_parameters": parent.info.nonzero_parameters}


def _boom(parent, config, tmp: Path) -> dict:
    raise RuntimeError("boom: a library failed inside the step")


def register() -> None:
    """Register the test steps through the public decorator (once per process)."""
    if "sleepy" not in STEPS:
        register_step("sleepy", NoConfig, help="test: slow copy")(_sleepy)
        register_step("boom", NoConfig, help="test: raises RuntimeError")(_boom)


if __name__ == "__main__":
    register()
    sys.path.insert(0, str(Path(__file__).parent))  # isolation_cells for CELL_TARGET
    from slimbench.bench.orchestrate.runner import CELL, run_suite
    from slimbench.bench.orchestrate.suite import load_suite

    suite_path, run_dir, cache = sys.argv[1:4]
    target = sys.argv[4] if len(sys.argv) > 4 else CELL
    results = run_suite(load_suite(Path(suite_path)), Path(run_dir), resume=True,
                        cache=Path(cache), cell_target=target, show_progress=False)
    print(" ".join(f"{r.cell.id}={r.status}" for r in results))

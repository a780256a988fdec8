"""The CI example (docs/github-actions-gate.yml) names only options that exist and files that
are in the repository: a copied workflow must not fail on its first run."""

import re
import shlex
from pathlib import Path

import yaml

from tests.test_gpu_script import _parse

ROOT = Path(__file__).parent.parent
WORKFLOW = ROOT / "docs" / "github-actions-gate.yml"


def _commands() -> list[list[str]]:
    """Every `slimbench` command line of the workflow's steps, continuation lines joined and
    the loop's ``$build`` set to each build."""
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["bench"]["steps"]
    out = []
    for step in steps:
        script = (step.get("run") or "").replace("\\\n", " ")
        for line in script.splitlines():
            match = re.search(r"(?:^|\s)\S*/bin/slimbench\"?\s+(.*)$", line.strip())
            if not match:
                continue
            for build in ("base", "pr") if "$build" in line else ("pr",):
                out.append(shlex.split(match.group(1).replace("$build", build)))
    return out


def test_every_slimbench_line_parses(monkeypatch):
    commands = _commands()
    assert {argv[0] for argv in commands} == {"compress", "compare", "demo"}
    for argv in commands:
        _parse(argv, monkeypatch)


def test_the_files_it_names_exist():
    text = WORKFLOW.read_text()
    named = set(re.findall(r"\bpr/((?:bench|docs|compress|tasks)/[\w./-]+)", text))
    named |= set(re.findall(r"\$build/([\w.-]+\.txt)", text))
    named |= set(re.findall(r"\b(bench/baselines/demo-[\w.-]+)", text))  # the demo's baseline
    assert {"constraints.txt", "bench/baselines/demo-cpu"} <= named
    for path in named:
        assert (ROOT / path).exists(), f"{WORKFLOW.name} names {path}, which does not exist"

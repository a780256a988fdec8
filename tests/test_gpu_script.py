"""scripts/gpu_check.sh cannot rot: it runs once per lent GPU machine, where a bad option costs the
whole check. The script is run here by bash with stand-ins for python3, nvidia-smi and slimbench;
each recorded `slimbench` call then goes through the CLI's own argument handling (`main`, with the
commands replaced by a recorder), and its run directory must not exist when it is called."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from slimbench.bench import cli

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"

# Records its argv and, for every argument, whether that path existed at the time of the call.
RECORDER = """import json, os, sys
argv = sys.argv[1:]
with open(os.environ["SLIMBENCH_CALLS"], "a") as f:
    f.write(json.dumps({"argv": argv, "exists": {os.path.normpath(a): os.path.exists(a)
                                                 for a in argv}}) + "\\n")
"""


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run_script(tmp_path: Path) -> list[dict]:
    """Run the script in an empty directory (default $OUT); return the slimbench calls it made."""
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    (bin_dir / "recorder.py").write_text(RECORDER)
    _stub(bin_dir / "slimbench", f'exec "{sys.executable}" "{bin_dir / "recorder.py"}" "$@"')
    _stub(bin_dir / "python3", "exit 0")  # pip, pytest and the version print
    _stub(bin_dir / "nvidia-smi", "exit 0")
    calls = tmp_path / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLIMBENCH_CALLS": str(calls)}
    r = subprocess.run(["bash", str(SCRIPT)], cwd=work, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def _parse(argv: list[str], monkeypatch):
    """``argv`` through `slimbench`'s main as the shell would run it; the parsed args, or a
    failure naming the line (an unknown option makes argparse exit 2)."""
    seen = []
    monkeypatch.setattr(cli, "COMMANDS", {name: seen.append for name in cli.COMMANDS})
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    if rc != 0 or not seen:
        pytest.fail(f"`slimbench {' '.join(argv)}` is not a valid command line (exit {rc})")
    return seen[0]


pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_every_slimbench_line_parses_and_gets_a_new_run_dir(tmp_path, monkeypatch):
    from slimbench.bench.orchestrate.demo import DEMO_SUITE
    from slimbench.bench.orchestrate.suite import load_suite

    calls = _run_script(tmp_path)
    lines = [ln for ln in SCRIPT.read_text().splitlines() if re.match(r"\s*slimbench\s", ln)]
    assert lines and len(calls) == len(lines)  # every slimbench line ran (none hidden in a branch)
    for call in calls:
        args = _parse(call["argv"], monkeypatch)
        if args.command in ("demo", "run"):
            # the overrides name real suite keys and values: checked as the runner would
            suite = load_suite(getattr(args, "suite", None) or DEMO_SUITE, args.overrides)
            assert "cuda" in suite.devices[0], "the GPU check's demo must run its cells on cuda"
            assert args.out is not None, "give the run directory, so that it lands under $OUT"
            out = os.path.normpath(str(args.out))
            assert call["exists"][out] is False, f"{out} existed before `slimbench {args.command}`"


@pytest.mark.parametrize("argv", [
    ["demo", "--device", "cuda", "--limit", "50", "--out", "x"],  # the script's old line
    ["demo", "devices=[cuda]", "--out", "x", "--no-such-option"],
])
def test_an_unknown_option_fails_the_check(argv, monkeypatch, capsys):
    with pytest.raises(pytest.fail.Exception, match="is not a valid command line"):
        _parse(argv, monkeypatch)

"""Property-based fuzz (Hypothesis) of ``slimbench validate`` and of the gate's inputs: any
mutation of a run's results file, cell file or per-example file is either accepted or refused
in one line (exit 2); never a traceback (issue 24). Bounded: a fixed number of examples per
property, derandomized so that CI is repeatable. ``SLIMBENCH_FUZZ_EXAMPLES=5000`` explores
further, with a fresh random seed each time."""

import json
import os
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimbench.bench.cli import main

FUZZ = settings(max_examples=int(os.environ.get("SLIMBENCH_FUZZ_EXAMPLES", 200)), deadline=None,
                database=None,  # no .hypothesis folder in the checkout
                derandomize="SLIMBENCH_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
FILES = ("results.json", "cells/v--cpu.json", "cells/v--cpu.examples.jsonl")

# JSON values, the odd ones first in mind: NaN, infinities, huge and negative numbers, wrong
# types, nesting
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


def _paths(value, prefix=()):
    """Every (container path, key) in a parsed JSON value."""
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, child in items:
        yield prefix, key
        yield from _paths(child, prefix + (key,))


def _mutate(doc, data):
    """One change somewhere in ``doc``: a value replaced, or a key or item removed."""
    paths = list(_paths(doc))
    if not paths:
        return data.draw(VALUES)
    where, key = data.draw(st.sampled_from(paths))
    parent = doc
    for k in where:
        parent = parent[k]
    if data.draw(st.booleans()):
        parent[key] = data.draw(VALUES)
    else:
        del parent[key]
    return doc


def _parsed(text: str):
    try:
        return json.loads(text)
    except ValueError:  # an earlier mutation left no JSON there
        return None


def _mutate_file(run: Path, data) -> None:
    path = run / data.draw(st.sampled_from(FILES))
    if path.suffix == ".jsonl":
        lines = path.read_text().splitlines()
        how = data.draw(st.sampled_from(["record", "truncate", "garbage"]))
        i = data.draw(st.integers(0, max(len(lines) - 1, 0)))
        if how == "record" and i < len(lines):
            lines[i] = json.dumps(_mutate(_parsed(lines[i]), data))
        elif how == "truncate":
            lines = lines[:i]
        else:
            lines.insert(i, data.draw(st.text(max_size=20)).replace("\n", " "))
        path.write_text("".join(line + "\n" for line in lines))
    else:
        path.write_text(json.dumps(_mutate(_parsed(path.read_text()), data)))


def _fresh(tmp_path: Path, template: Path) -> Path:
    run = tmp_path / "fuzzed"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(template, run)
    return run


@FUZZ
@given(data=st.data())
def test_validate_is_valid_or_one_line(tmp_path, capsys, fuzz_run, data):
    run = _fresh(tmp_path, fuzz_run)
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate_file(run, data)
    rc = main(["validate", str(run)])  # anything but a SlimbenchError escapes: a failure here
    _, err = capsys.readouterr()
    assert rc in (0, 2) and (rc == 0 or err.count("\n") == 1), err


@FUZZ
@given(data=st.data())
def test_gate_inputs_pass_fail_or_one_line(tmp_path, capsys, fuzz_run, data):
    run = _fresh(tmp_path, fuzz_run)
    _mutate_file(run, data)
    rc = main(["gate", "--baseline", str(fuzz_run), "--candidate", str(run),
               "--allow-different-suites"])
    _, err = capsys.readouterr()
    assert rc in (0, 1, 2) and "Traceback" not in err, err
    # whatever the gate accepted as evidence, validate accepts too (one set of checks)
    if rc in (0, 1):
        assert main(["validate", str(run)]) == 0, capsys.readouterr().err

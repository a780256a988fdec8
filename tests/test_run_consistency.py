"""The gate, validate and --resume trust nothing they did not check (issue 24, rows 3, 5-8,
12, 13): a run's figures must be what its per-example files give, its files must be the ones it
wrote, and only the cells of its suite are its cells."""

import json
import logging
import math
import shutil

import pytest

from slimbench.bench.cli import main
from slimbench.bench.orchestrate.runner import finished_result
from slimbench.errors import UsageError
from slimbench.reports.consistency import read_records
from slimbench.reports.output import write_tables
from slimbench.reports.table import load_rows
from slimbench.schema import CellInfo
from slimbench.tasks.paired import check_records


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _gate(capsys, base, cand):
    return _cli(capsys, "gate", "--baseline", str(base), "--candidate", str(cand))


def test_a_consistent_run_passes_and_records_its_examples_digest(make_run, tmp_path, capsys):
    run = make_run(tmp_path)
    cell = json.loads((run / "cells" / "v--cpu.json").read_text())
    assert len(cell["examples_sha256"]) == 64
    rc, out, err = _gate(capsys, run, make_run(tmp_path, "b"))
    assert rc == 0 and "identical on all 30 paired examples" in out, err
    assert _cli(capsys, "validate", str(run))[0] == 0


def test_a_tripled_figure_with_its_examples_kept_is_refused(make_run, tmp_path, capsys):
    """Row 3: the perplexity tripled in results.json and the cell file, examples kept: the
    gate printed PASS "+200% ... identical on all paired examples"; now the run is refused."""
    base = make_run(tmp_path)
    cand = tmp_path / "b"
    shutil.copytree(base, cand)
    rows = json.loads((cand / "results.json").read_text())["rows"]
    ppl = next(r["value"] for r in rows if r["metric"] == "perplexity.perplexity")

    def triple_row(d):
        for r in d["rows"]:
            if r["metric"] == "perplexity.perplexity":
                r["value"] *= 3

    def triple_cell(d):
        d["quality"]["perplexity"]["value"] *= 3
        d["quality"]["perplexity"]["metrics"]["perplexity"]["value"] *= 3

    _edit_json(cand / "results.json", triple_row)
    _edit_json(cand / "cells" / "v--cpu.json", triple_cell)
    rc, out, err = _gate(capsys, base, cand)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (f"b/cells/v--cpu.examples.jsonl: task perplexity: perplexity re-aggregated from "
            f"its 30 examples is {ppl:.6g}, but cells/v--cpu.json records {3 * ppl:.6g}: the "
            "run is inconsistent") in err
    rc, _, err = _cli(capsys, "validate", str(cand))
    assert rc == 2 and "re-aggregated from its 30 examples" in err
    # the results file alone edited: it no longer holds its cells' rows
    shutil.copy(base / "cells" / "v--cpu.json", cand / "cells" / "v--cpu.json")
    rc, _, err = _gate(capsys, base, cand)
    assert rc == 2 and (f"v--cpu perplexity.perplexity is {3 * ppl!r}, but cells/v--cpu.json "
                        f"records {ppl!r}: the results file does not match its cells") in err
    assert "slimbench report RUN" in err


def test_a_truncated_or_edited_examples_file_is_detected(make_run, tmp_path, capsys):
    """Row 12: a truncated examples file was silently unpaired; now its sha256 (recorded by
    the cell) refuses it in the gate and validate, and --resume measures the cell again."""
    base, cand = make_run(tmp_path), make_run(tmp_path, "b")
    examples = cand / "cells" / "v--cpu.examples.jsonl"
    lines = examples.read_text().splitlines(keepends=True)
    examples.write_text("".join(lines[:-5]))
    rc, out, err = _gate(capsys, base, cand)
    assert rc == 2 and out == ""
    assert "v--cpu.examples.jsonl: its sha256 is not the one cells/v--cpu.json recorded" in err
    assert _cli(capsys, "validate", str(cand))[0] == 2
    said = []
    head = CellInfo(id="v--cpu", variant="v", model="reference", recipe=[], device="cpu",
                    content_key="k1")
    assert finished_result(cand, head, said.append) is None
    assert "its sha256 is not the one" in said[0] and said[0].endswith("measuring it again")
    assert finished_result(base, head, said.append) is not None  # an intact one is kept
    # a cell written before the digest was recorded: the count and the figures still tell
    _edit_json(cand / "cells" / "v--cpu.json", lambda d: d.pop("examples_sha256"))
    rc, _, err = _gate(capsys, base, cand)
    assert rc == 2 and ("task mc has 7 example records, but cells/v--cpu.json records n=12: "
                        "the file was truncated or edited") in err


@pytest.mark.parametrize("field,value,message", [
    ("nll_nats", "abc", "example 't3' of a perplexity task: nll_nats must be a finite number in "
                        "[0, 1000 x tokens = 61000], got 'abc'"),
    ("nll_nats", math.nan, "nll_nats must be a finite number in [0, 1000 x tokens"),
    ("nll_nats", 1e308, "got 1e+308"),
    ("nll_nats", -1.0, "got -1.0"),
    ("tokens", -4, "example 't3' of a perplexity task: tokens must be a whole number >= 0, "
                   "got -4"),
    ("tokens", 2.5, "tokens must be a whole number >= 0, got 2.5"),
    ("tokens", True, "tokens must be a whole number >= 0, got True"),
    ("bytes", None, "bytes must be a whole number >= 0, got None"),
])
def test_bad_per_example_values_are_one_line(make_run, tmp_path, capsys, field, value, message):
    """Row 6: "abc" was a traceback, NaN an interval of NaN, negative tokens a PASS. Each is
    now refused, naming the example, in the gate and in validate, even with a digest that
    matches (the file was written that way)."""
    import hashlib

    base, cand = make_run(tmp_path), make_run(tmp_path, "b")
    path = cand / "cells" / "v--cpu.examples.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[3][field] = value
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text)
    _edit_json(cand / "cells" / "v--cpu.json", lambda d: d.update(
        examples_sha256=hashlib.sha256(text.encode()).hexdigest()))
    for rc, _, err in (_gate(capsys, base, cand), _cli(capsys, "validate", str(cand))):
        assert rc == 2 and "Traceback" not in err and err.count("\n") == 1
        assert message in err, err


def test_record_checks_of_each_kind(make_run, tmp_path):
    records = read_records(make_run(tmp_path) / "cells" / "v--cpu.examples.jsonl")
    ppl = [r for r in records if r["task"] == "perplexity"]
    mcs = [r for r in records if r["task"] == "mc"]
    check_records(ppl, "perplexity")
    check_records(mcs, "multiple_choice")
    with pytest.raises(UsageError, match="score no tokens at all"):
        check_records([{"id": "a", "nll_nats": 0.0, "tokens": 0, "bytes": 3}], "perplexity")
    with pytest.raises(UsageError, match="example 'a' of a perplexity task: lacks 'tokens'"):
        check_records([{"id": "a", "nll_nats": 1.0, "bytes": 3}], "perplexity")
    mc = mcs[0]
    for change, message in (({"reference": 3}, "reference must be a choice index in [0, 2]"),
                            ({"loglikelihoods": [1, math.inf, 2]}, "finite numbers"),
                            ({"choice_chars": [5, 0, 7]}, "choice_chars must be 3 whole"),
                            ({"loglikelihoods": []}, "a non-empty list")):
        with pytest.raises(UsageError, match=message.replace("[", r"\[")):
            check_records([mc | change], "multiple_choice")
    with pytest.raises(UsageError, match="prediction must be text, got 7"):
        check_records([{"id": "g", "prediction": 7, "reference": "x"}], "generate")
    with pytest.raises(UsageError, match="#0.*is list, not a mapping"):
        check_records([[1]], "generate")


@pytest.mark.parametrize("where", ["results", "cell"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_not_valid(make_run, tmp_path, capsys, where, literal):
    """Row 7: NaN / Infinity (as Python's json writes them) in results.json or a cell file."""
    run = make_run(tmp_path)
    if where == "results":
        path = run / "results.json"
        text = path.read_text()
        value = json.loads(text)["rows"][0]["value"]
        path.write_text(text.replace(repr(value), literal, 1))
        want = "results.json: rows[0].value must be a finite number or null, got"
    else:
        path = run / "cells" / "v--cpu.json"
        number = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[literal]
        _edit_json(path, lambda d: d["quality"]["mc"].update(seconds=number))  # json: NaN...
        want = "v--cpu.json: quality.mc.seconds must be a finite number, got"
    rc, _, err = _cli(capsys, "validate", str(run))
    assert rc == 2 and want in err, err


@pytest.mark.parametrize("text,message", [
    ("[" * 100000 + "]" * 100000, "nests deeper than 100 levels"),
    ("[" * 150 + "]" * 150, "nests deeper than 100 levels"),
    ('{"document": [1], "schema_version": 1}', "document must be one of 'cell', 'eval', "
                                               "'results', 'search', got [1]"),
    ('{"document": {"a": 1}, "schema_version": 1}', "document must be one of"),
])
def test_validate_never_overflows_nor_raises_a_type_error(tmp_path, capsys, text, message):
    """Row 8: a RecursionError and a TypeError traceback before."""
    path = tmp_path / "x.json"
    path.write_text(text)
    rc, out, err = _cli(capsys, "validate", str(path))
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_a_stray_cell_file_is_reported_and_ignored(make_run, tmp_path, capsys, caplog):
    """Row 13: cells/ghost--cpu.json was merged into the results ("36 rows from 3 cells")."""
    run = make_run(tmp_path)
    rows = load_rows(run)
    ghost = json.loads((run / "cells" / "v--cpu.json").read_text())
    ghost["cell"] |= {"id": "ghost--cpu", "variant": "ghost"}
    (run / "cells" / "ghost--cpu.json").write_text(json.dumps(ghost))
    (run / "results.json").unlink()
    with caplog.at_level(logging.WARNING):
        again = load_rows(run)
        summary = write_tables(run)
    assert again == rows and summary.cells == 1
    assert "ignoring 1 file(s) in cells/ that are not cells of its suite: ghost--cpu.json" \
        in caplog.text
    rc, out, _ = _cli(capsys, "validate", str(run))
    assert rc == 0 and out.strip().endswith(
        "; ignored 1 file(s) in cells/ that are not cells of its suite: ghost--cpu.json")
    assert "1 cell result, 1 results file" in out


def test_resume_with_a_malformed_suite_file_is_one_line(tmp_path, capsys):
    """Row 5: suite.json replaced by `{not json`, then --resume: a JSONDecodeError traceback."""
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntasks: []\nlatency: {}\nvariants:\n  v: {model: reference}\n")
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    (run / "suite.json").write_text("{not json")
    rc, _, err = _cli(capsys, "run", str(suite), "--out", str(run), "--resume")
    assert rc == 2 and err.count("\n") == 1
    assert f"the run's suite file {run / 'suite.json'} is not valid JSON" in err
    assert (run / "suite.json").read_text() == "{not json"  # nothing of the run touched

"""The tune / test split: deterministic by id, disjoint, covering, and as documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from slimbench.errors import UsageError
from slimbench.tasks.evalsets import evalset_names, load_evalset
from slimbench.tasks.splits import select, split_of

ROOT = Path(__file__).resolve().parent.parent


def test_a_row_s_side_follows_its_id_not_its_position_or_order():
    rows = [{"id": f"x-{i}", "v": i} for i in range(200)]
    tune, test = select(rows, "tune"), select(rows, "test")
    assert len(tune) + len(test) == 200 and not {r["id"] for r in tune} & {r["id"] for r in test}
    assert select(rows[::-1], "tune") == tune[::-1]  # the order read in does not matter
    grown = rows + [{"id": f"y-{i}"} for i in range(50)]  # a set that grows keeps old sides
    assert [r for r in select(grown, "tune") if r["id"].startswith("x-")] == tune
    assert 70 < len(tune) < 130  # about half: a binomial(200, 0.5) is inside this 99.6% of the time
    assert select(rows, "all") is rows


def test_ids_by_position_and_by_value_agree():
    assert split_of(3) == split_of("3")
    rows = [{"v": i} for i in range(40)]  # no id field: its position is its id
    assert [r["v"] for r in select(rows, "test")] == [i for i in range(40) if split_of(i) == "test"]


def test_an_unknown_split_is_one_line():
    with pytest.raises(UsageError, match=r"unknown split 'train'; known: all, tune, test"):
        select([], "train")


def test_the_documented_counts_are_the_files():
    table = (ROOT / "docs" / "splits.md").read_text()
    documented = {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in
                  re.finditer(r"^\| (\w+) \| (\d+) \| (\d+) \| (\d+) \|$", table, re.M)}
    assert set(documented) == set(evalset_names())
    for name in evalset_names():
        rows = load_evalset(name)
        assert documented[name] == (len(rows), len(select(rows, "tune")),
                                    len(select(rows, "test"))), name


def test_a_task_s_rows_by_split_and_offset(tmp_path):
    from slimbench.tasks.sources import load_examples
    from slimbench.tasks.specs import resolve_task

    spec = resolve_task("method_name")
    tune = select(load_evalset("method_name"), "tune")
    assert load_examples(spec, 16, "tune", 16) == tune[16:32]  # a screen's second look
    assert load_examples(spec, None, "test") == select(load_evalset("method_name"), "test")
    with pytest.raises(UsageError, match="has no tune rows after the first 500"):
        load_examples(spec, 16, "tune", 500)
    # a user's file without ids: rows are known by their position in the whole file
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(f'{{"prompt": "p{i}", "target": "t{i}"}}\n' for i in range(30)))
    user = dataclasses.replace(spec, dataset=dataclasses.replace(spec.dataset, evalset=None,
                                                                  path=str(data)))
    got = load_examples(user, None, "test")
    assert [r["id"] for r in got] == [i for i in range(30) if split_of(i) == "test"]
    assert all(r["prompt"] == f"p{r['id']}" for r in got)

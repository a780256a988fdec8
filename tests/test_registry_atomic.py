import json
import os

import pytest

from slimbench import atomic
from slimbench.errors import UsageError
from slimbench.registry import Registry


def test_registry_lookup_and_did_you_mean():
    reg = Registry("widget")

    @reg.register("magnitude")
    def magnitude():
        """Prune by magnitude."""

    reg.add("wanda", object(), "activation-aware")
    assert reg.get("magnitude") is magnitude
    assert reg.names() == ["magnitude", "wanda"]
    assert reg.describe("magnitude") == "Prune by magnitude."
    with pytest.raises(UsageError, match=r"unknown widget 'magnitud'; did you mean 'magnitude'\?"):
        reg.get("magnitud")
    with pytest.raises(UsageError) as e:
        reg.get("zzz")
    assert "did you mean" not in str(e.value) and "known: magnitude, wanda" in str(e.value)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("wanda", object())


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "r.json"
    atomic.write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    atomic.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [x.name for x in p.parent.iterdir()] == ["r.json"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "r.txt"
    atomic.write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(p, "new")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["r.txt"]

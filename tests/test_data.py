"""The embedded corpus and evaluation sets match their manifests and are held out."""

import hashlib
import json

import pytest

from slimbench.errors import UsageError
from slimbench.tasks import evalsets
from slimbench.tasks.corpus import CORPUS_DIR, load_corpus


def test_corpus_manifest_matches_file():
    man = json.loads((CORPUS_DIR / "manifest.json").read_text())
    blob = (CORPUS_DIR / man["file"]).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == man["sha256"]
    assert len(load_corpus("train")) == man["files"]["train"]
    assert len(load_corpus("validation")) == man["files"]["validation"]
    assert sum(len(r.text) for r in load_corpus("train")) == man["chars"]["train"]
    assert (CORPUS_DIR / "LICENSE-PSF.txt").read_text().startswith("A. HISTORY OF THE SOFTWARE")
    with pytest.raises(ValueError, match="unknown corpus split 'test'"):
        load_corpus("test")


def test_evalset_manifests_match_files():
    man = evalsets.manifest()
    assert sorted(man) == ["docstring_body", "docstring_summary", "lm_stdlib", "method_name",
                           "next_line"]
    total = 0
    for name, entry in man.items():
        blob = (evalsets.EVALSET_DIR / entry.file).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == entry.sha256, name
        assert len(blob) == entry.bytes
        rows = evalsets.load_evalset(name)
        assert len(rows) == entry.count >= 100
        assert len({r["id"] for r in rows}) == len(rows)  # ids unique
        total += len(blob)
    assert total <= 2 * 1024 * 1024


def test_evalsets_are_held_out_from_training():
    train_paths = {r.path for r in load_corpus("train")}
    val_paths = {r.path for r in load_corpus("validation")}
    assert {r.split for r in load_corpus("validation")} == {"validation"}
    assert not train_paths & val_paths
    for name in evalsets.evalset_names():
        paths = {r["path"] for r in evalsets.load_evalset(name)}
        assert paths <= val_paths, name


def test_examples_are_well_formed():
    for r in evalsets.load_evalset("method_name"):
        assert r["prompt"].endswith("def") and r["target"].isidentifier()
    for r in evalsets.load_evalset("docstring_summary"):
        assert r["prompt"].endswith('"""') and "\n" not in r["target"]
    for r in evalsets.load_evalset("docstring_body"):
        assert r["prompt"].endswith(r["summary"]) and r["target"].strip()
    for name in evalsets.evalset_names():
        for r in evalsets.load_evalset(name):  # see build_corpus: no trailing spaces in prompts
            assert "prompt" not in r or not r["prompt"].endswith((" ", "\t")), (name, r["id"])


def test_tampered_evalset_is_refused(tmp_path, monkeypatch):
    for f in evalsets.EVALSET_DIR.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    with open(tmp_path / "method_name.jsonl", "a") as fh:
        fh.write('{"id": "extra"}\n')
    monkeypatch.setattr(evalsets, "EVALSET_DIR", tmp_path)
    with pytest.raises(UsageError, match="does not match its manifest sha256"):
        evalsets.load_evalset("method_name")
    with pytest.raises(UsageError, match="unknown evaluation set 'nope'"):
        evalsets.load_evalset("nope")

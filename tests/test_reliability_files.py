"""Reliability II (issue 24), the file side: the artifact cache owns only what it made (row 1),
an artifact without its manifest is refused rather than loaded as something else (row 11),
artifact files are as readable as the umask allows (row 16), and an I/O error is one line
that loses nothing already computed (row 4)."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from slimbench import atomic, files
from slimbench.bench.cli import main
from slimbench.compress.artifact import STAGING_MARK, artifact_files, staging_dir
from slimbench.compress.cache import ArtifactCache
from slimbench.compress.loader import load_artifact
from slimbench.errors import ModelLoadError

SHAPE = "shape:gpt2:n_layer=1,n_embd=32,n_head=2,n_positions=64"
INT8 = (("torch_dynamic_int8", {}),)
KEY = "0123456789abcdef0123"  # a cache key's length and alphabet
SUITE = (f"name: t\nvariants:\n  a: {{model: '{SHAPE}', recipe: [torch_dynamic_int8]}}\n"
         "devices: [cpu]\nthreads: 1\ntasks: []\ntimeout: 300\n"
         "latency: {prefill: [8], decode_contexts: [8], new_tokens: 2, generate_prompt: 0, "
         "repeats: 1, min_seconds: 0}\n")


def tree(folder: Path) -> dict[str, bytes | None]:
    """Everything under ``folder``, hidden files too: path -> bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
            for p in sorted(folder.rglob("*"))}


def users_things(folder: Path) -> dict[str, bytes | None]:
    """What a user keeps in the folder they pass as --cache, some of it named like the
    cache's own leftovers; returns ``tree(folder)``."""
    notes = folder / ".notes.v1.partial"
    notes.mkdir(parents=True)
    (notes / "important.txt").write_text("keep")
    lookalike = folder / f".{KEY}-torch_dynamic_int8.host-1.x.partial"  # but unmarked
    lookalike.mkdir()
    (lookalike / "mine.txt").write_text("keep too")
    (folder / ".notes.lock").write_text("not a lock")
    (folder / "README").write_text("my folder")
    return tree(folder)


def one_line(err: str) -> bool:
    return err.startswith("slimbench: error: ") and err.count("\n") == 1 \
        and "Traceback" not in err


# -- row 1: the cache owns only what it made --------------------------------------------------

def test_cache_sweep_removes_only_its_own_dead_staging_folders(tmp_path):
    cache = tmp_path / "cache"
    mine = users_things(cache)
    dead = cache / f".{KEY}-torch_dynamic_int8.host-1.y.partial"  # a killed build's, marked
    dead.mkdir()
    (dead / STAGING_MARK).write_text(json.dumps({"out": f"{KEY}-torch_dynamic_int8"}))
    (dead / "model.safetensors").write_bytes(b"half")
    ArtifactCache(cache, print)
    after = tree(cache)
    assert after.pop(f".{KEY}-torch_dynamic_int8.lock") == b""  # the key's lock: the cache's
    assert after == mine  # the user's things as they were; no lock made for anything of theirs


@pytest.mark.slow
def test_run_with_a_users_folder_as_cache_leaves_it_alone(tmp_path, capsys):
    cache = tmp_path / "userdir"
    mine = users_things(cache)
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--out", str(tmp_path / "r1"), "--cache", str(cache)]) == 0
    (built,) = [p for p in cache.iterdir() if p.name.endswith("-torch_dynamic_int8")
                and not p.name.startswith(".")]
    ours = {built.name, f".{built.name}.lock"}
    assert {p.name for p in cache.iterdir()} - ours == {p for p in mine if "/" not in p}
    assert {k: v for k, v in tree(cache).items() if k.split("/")[0] not in ours} == mine
    assert STAGING_MARK not in os.listdir(built)

    (built / "manifest.json").unlink()  # a damaged artifact: discarded and rebuilt
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(tmp_path / "r2"), "--cache", str(cache)]) == 0
    assert "no manifest.json); rebuilding it" in capsys.readouterr().out
    assert (built / "manifest.json").is_file()
    assert {k: v for k, v in tree(cache).items() if k.split("/")[0] not in ours} == mine


def test_the_staging_mark_is_never_part_of_an_artifact(tmp_path):
    with staging_dir(tmp_path / "out") as tmp:
        (tmp / "weights").write_bytes(b"w")
        assert (tmp / STAGING_MARK).is_file()
        assert [f.name for f in artifact_files(tmp)] == ["weights"]  # what the manifest lists
    assert os.listdir(tmp_path / "out") == ["weights"]


# -- row 11: an artifact without its manifest -------------------------------------------------

def test_cached_int8_artifact_without_manifest_is_refused(tmp_path, capsys):
    path = Path(ArtifactCache(tmp_path / "cache", print).build(SHAPE, INT8))
    (path / "manifest.json").unlink()
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 2  # it would load as its float parent
    err = capsys.readouterr().err
    assert one_line(err) and "is a slimbench artifact (it is named like an artifact cache " \
        "folder, <key>-<step>) but has no manifest.json" in err


def test_recipe_step_and_onnx_folders_without_manifest_are_refused(tiny_dir, tmp_path):
    step = tmp_path / "out" / "01-torch_cast"
    shutil.copytree(tiny_dir, step)
    (step.parent / "recipe.json").write_text(json.dumps({"artifacts": ["01-torch_cast"]}))
    with pytest.raises(ModelLoadError, match="a step of the recipe output .* no manifest.json"):
        load_artifact(str(step))
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    shutil.copy(tiny_dir / "config.json", onnx)
    (onnx / "model.onnx").write_bytes(b"graph")
    with pytest.raises(ModelLoadError, match=r"\(it holds an ONNX model\) but has no manifest"):
        load_artifact(str(onnx))
    int8 = tmp_path / "int8"  # a torch int8 artifact copied out of the cache, its manifest lost
    shutil.copytree(tiny_dir, int8)
    (int8 / "int8_linears.safetensors").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"\(it holds torch int8 weights, as "
                                             r"torch_dynamic_int8 writes them\) but has no"):
        load_artifact(str(int8))


def test_users_own_checkpoints_without_manifest_still_load(tiny_dir, tmp_path):
    assert load_artifact(str(tiny_dir)).info.kind == "local"
    beside = tmp_path / "work" / "ckpt-final"  # a recipe.json that does not list it
    shutil.copytree(tiny_dir, beside)
    (beside.parent / "recipe.json").write_text(json.dumps({"artifacts": ["01-torch_cast"]}))
    assert load_artifact(str(beside)).info.kind == "local"


# -- row 16: readable as the umask says -------------------------------------------------------

@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_artifact_files_have_the_umasks_modes(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = Path(ArtifactCache(tmp_path / "cache", print).build(SHAPE, INT8))
        with staging_dir(tmp_path / "out") as tmp:  # a writer that makes a private file
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "private").touch(mode=0o600)
    finally:
        os.umask(old)
    modes = {p: p.stat().st_mode & 0o777 for p in [*path.iterdir(), *(tmp_path / "out").rglob("*")]}
    assert "int8_linears.safetensors" in {p.name for p in modes}  # safetensors: 0600
    assert modes == {p: (0o777 if p.is_dir() else 0o666) & ~umask for p in modes}
    assert {p.stat().st_mode & 0o777 for p in (path, tmp_path / "out")} == {0o777 & ~umask}


# -- row 4: I/O errors ------------------------------------------------------------------------

class FailingOs:
    """``os`` for slimbench.atomic, except that putting a file named ``*suffix`` in place
    fails with ``code`` (a full disk, a read-only mount)."""

    def __init__(self, code: int, suffix: str = "") -> None:
        self.code, self.suffix = code, suffix

    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst):
        if str(dst).endswith(self.suffix):
            raise OSError(self.code, os.strerror(self.code))
        os.replace(src, dst)


def test_eval_out_on_a_full_disk_prints_the_scores_then_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(atomic, "os", FailingOs(errno.ENOSPC))
    out = tmp_path / "eval.json"
    rc = main(["eval", "reference", "--task", "method_name", "--limit", "2", "--threads", "1",
               "--out", str(out)])
    std = capsys.readouterr()
    assert rc == 2 and one_line(std.err)
    assert std.err == (f"slimbench: error: cannot write {tmp_path / 'eval.examples.jsonl'}: "
                       "[Errno 28] No space left on device; the results are printed above as "
                       "JSON\n")
    scores = json.loads(std.out[std.out.index("\n{") + 1:])
    assert scores["tasks"]["method_name"]["n"] == 2
    assert os.listdir(tmp_path) == []  # no temp file left behind


class ReadOnly:
    """``os`` for slimbench.files, with ``folder`` on a read-only mount."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __getattr__(self, name):
        return getattr(os, name)

    def access(self, path, mode):
        return Path(path) != self.folder and os.access(path, mode)

    def statvfs(self, path):
        return type("StatVfs", (), {"f_flag": os.ST_RDONLY})()


@pytest.mark.parametrize("args, what", [
    (["eval", "reference", "--task", "method_name", "--out", "RO/e.json"], "--out RO"),
    (["compress", "reference", "--step", "torch_cast", "--out", "RO/a"], "output RO"),
    (["run", "s.yaml", "--out", "RO/run"], "run directory RO/run"),
    (["run", "s.yaml", "--out", "W/run", "--cache", "RO"], "artifact cache RO"),
])
def test_read_only_output_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, args,
                                                       what):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "RO").mkdir()
    (tmp_path / "s.yaml").write_text(SUITE)
    monkeypatch.setattr(files, "os", ReadOnly(Path("RO")))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert one_line(err) and err.startswith(f"slimbench: error: {what}")
    assert err.endswith(": cannot write in RO: [Errno 30] Read-only file system\n")
    assert os.listdir("RO") == [] and not Path("W").exists()


@pytest.mark.slow
def test_full_disk_while_reporting_keeps_the_cells_for_resume(tmp_path, capsys, monkeypatch):
    suite, run = tmp_path / "s.yaml", tmp_path / "run"
    suite.write_text(SUITE)
    monkeypatch.setattr(atomic, "os", FailingOs(errno.ENOSPC, "results.csv"))
    assert main(["run", str(suite), "--out", str(run), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and err == (
        f"slimbench: error: cannot write {run / 'results.csv'}: [Errno 28] No space left on "
        "device; the cells finished so far are kept: --resume completes the run\n")
    assert (run / "cells" / "a--cpu.json").is_file() and not (run / "results.csv").exists()
    monkeypatch.undo()
    assert main(["run", str(suite), "--out", str(run), "--cache", str(tmp_path / "c"),
                 "--resume"]) == 0
    assert (run / "results.csv").is_file()


def test_readme_says_what_is_refused_run_and_written():
    """Row 17: lm-eval runs the Python that `!function` names in an include path you pass;
    the README's Security section says so, with what is refused and where files go."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Security", 1)[1].split("\n## ", 1)[0]
    for needle in ("--allow-pickle", "--trust-remote-code", "!function", "--include-path",
                   "/tmp/ray", "HF_HOME", "umask"):
        assert needle in section, needle


def test_a_step_that_fails_on_a_full_disk_says_so(tmp_path, monkeypatch):
    # a writer that truncates silently on a full disk fails later with a parser's message;
    # the disk is named as the cause, and nothing is left behind
    import collections

    import slimbench.compress.artifact as artifact

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(artifact.shutil, "disk_usage", lambda p: usage(10 * 2**30, 0, 2**20))
    full = r"No space left on device \(1.0 MiB free; the step failed with DecodeError: Wire"
    with pytest.raises(OSError, match=full) as e, staging_dir(tmp_path / "out") as tmp:
        (tmp / "model.onnx").write_bytes(b"\x08")
        raise DecodeError("Wire format was corrupt")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "out")
    assert os.listdir(tmp_path) == []
    # with room on the disk the step's own error stands
    monkeypatch.setattr(artifact.shutil, "disk_usage", lambda p: usage(10 * 2**30, 0, 2**30))
    with pytest.raises(DecodeError, match="Wire format"), staging_dir(tmp_path / "out"):
        raise DecodeError("Wire format was corrupt")
    assert os.listdir(tmp_path) == []


class DecodeError(Exception):
    """protobuf's parse error, as onnx.load raises it on a truncated model"""

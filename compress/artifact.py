"""The artifact format: a directory of model files plus ``manifest.json``.

The manifest says what the artifact *is*, measured rather than claimed: the recipe step and its
config, the parent it came from (spec + weights sha256), parameter and nonzero counts, bytes on
disk per file, the quantization audit and parity figures against the parent. Audits read the
manifest; they never trust a recipe's name.

An artifact is written into a temporary sibling directory and renamed into place only when
complete, so a failed step never leaves a half-written artifact and never replaces an old one.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from slimbench import __version__, atomic
from slimbench.errors import UsageError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path, h=None) -> str:
    """Hex sha256 of a file's bytes (fed into ``h`` when given, to hash several files)."""
    h = h or hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artifact_files(directory: Path) -> list[Path]:
    """The files an artifact consists of: every regular file but the manifest."""
    return [f for f in sorted(Path(directory).iterdir()) if f.is_file() and f.name != MANIFEST]


def file_table(directory: Path) -> dict[str, dict]:
    """``{name: {"bytes", "sha256"}}`` for every file in ``directory`` except the manifest."""
    return {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
            for f in artifact_files(directory)}


def verify_files(directory: Path, manifest: dict, full: bool = True) -> list[str]:
    """What differs between ``directory``'s files and the table its manifest recorded.

    The cheap check (``full=False``) compares names and sizes; the full one also each
    file's sha256. An empty list means the files are the ones that were written.
    """
    recorded = manifest.get("files") or {}
    present = {f.name: f for f in artifact_files(directory)}
    problems = [f"{n} is missing" for n in sorted(set(recorded) - set(present))]
    problems += [f"{n} was added" for n in sorted(set(present) - set(recorded))]
    for name in sorted(set(recorded) & set(present)):
        size = present[name].stat().st_size
        if size != recorded[name]["bytes"]:
            problems.append(f"{name} has {size} bytes, the manifest recorded "
                            f"{recorded[name]['bytes']}")
        elif full and sha256_file(present[name]) != recorded[name]["sha256"]:
            problems.append(f"{name}'s sha256 differs from the manifest's")
    return problems


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    from slimbench.files import read_json

    manifest = read_json(path, "artifact manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise UsageError(f"{path} is not a slimbench artifact manifest (not a mapping with a "
                         "'files' table)")
    if manifest.get("slimbench_artifact") != FORMAT_VERSION:
        raise UsageError(f"{path} is not a slimbench artifact manifest (version "
                         f"{manifest.get('slimbench_artifact')!r}, expected {FORMAT_VERSION})")
    return manifest


def finish_manifest(directory: Path, manifest: dict) -> dict:
    """Add the file table and totals to ``manifest`` and write it into ``directory``."""
    files = file_table(directory)
    manifest = {
        "slimbench_artifact": FORMAT_VERSION, "slimbench_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(), **manifest,
        "files": files, "bytes_on_disk": sum(f["bytes"] for f in files.values()),
    }
    atomic.write_json(directory / MANIFEST, manifest)
    return manifest


@contextmanager
def staging_dir(out: Path):
    """Yield a temporary directory beside ``out``; rename it to ``out`` on success.

    Raises:
        UsageError: ``out`` already exists (artifacts are never overwritten).
    """
    out = Path(out)
    if out.exists():
        raise UsageError(f"{out} already exists; choose another output directory "
                         "(slimbench never overwrites an artifact)")
    from slimbench.files import check_output_dir

    check_output_dir(out.parent, "output")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(out)
    owner = f"{socket.gethostname()}-{os.getpid()}"  # whose it is, for a later clean-up
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{owner}.",
                                suffix=".partial"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an artifact is an ordinary folder
        yield tmp
        os.replace(tmp, out)  # atomic on one filesystem; fails if `out` appeared meanwhile
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_dead_staging(out: Path) -> None:
    """Remove staging directories for ``out`` left by a killed process of this host (the
    name says whose: ``.<out>.<host>-<pid>.<random>.partial``). Another host's are left
    alone: its process cannot be seen from here."""
    mine = f".{out.name}.{socket.gethostname()}-"
    for p in out.parent.glob(f".{glob.escape(out.name)}.*.partial"):
        pid = p.name[len(mine):].split(".", 1)[0] if p.name.startswith(mine) else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True

"""The artifact format: a directory of model files plus ``manifest.json``.

The manifest says what the artifact *is*, measured rather than claimed: the recipe step and its
config, the parent it came from (spec + weights sha256), parameter and nonzero counts, bytes on
disk per file, the quantization audit and parity figures against the parent. Audits read the
manifest; they never trust a recipe's name.

An artifact is written into a temporary sibling directory and renamed into place only when
complete, so a failed step never leaves a half-written artifact and never replaces an old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from slimbench import __version__, atomic
from slimbench.errors import UsageError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def file_table(directory: Path) -> dict[str, dict]:
    """``{name: {"bytes", "sha256"}}`` for every file in ``directory`` except the manifest."""
    table = {}
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.name != MANIFEST:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
            table[f.name] = {"bytes": f.stat().st_size, "sha256": h.hexdigest()}
    return table


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an artifact is an ordinary folder
        yield tmp
        os.replace(tmp, out)  # atomic on one filesystem; fails if `out` appeared meanwhile
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

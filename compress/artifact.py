"""The artifact format: a directory of model files plus ``manifest.json``.

The manifest says what the artifact *is*, measured rather than claimed: the recipe step and its
config, the parent it came from (spec + weights sha256), parameter and nonzero counts, bytes on
disk per file, the quantization audit and parity figures against the parent. Audits read the
manifest; they never trust a recipe's name.

An artifact is written into a temporary sibling directory and renamed into place only when
complete, so a failed step never leaves a half-written artifact and never replaces an old one.
That staging directory holds a mark (``STAGING_MARK``) until just before the rename: clean-ups
remove only marked folders, so nothing a user keeps beside an artifact or in a cache is ever
taken for a leftover, whatever its name.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slimbench import __version__, atomic
from slimbench.compress.manifest import FORMAT_VERSION, FileEntry, Manifest
from slimbench.digest import sha256_file
from slimbench.errors import UsageError

MANIFEST = "manifest.json"
STAGING_MARK = ".slimbench-staging"  # see staging_dir
# a step that fails with less free than this beside its output is blamed on the disk
LOW_DISK_BYTES = 64 * 2**20
KEY_CHARS = 20  # a cache key: 80 bits of sha256 (collisions are not a concern at cache sizes)
# an artifact cache's folder, ``<key>-<step>`` (step names are SAFE_NAMEs, slimbench/names.py)
CACHE_FOLDER = re.compile(rf"[0-9a-f]{{{KEY_CHARS}}}-[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")


def artifact_files(directory: Path) -> list[Path]:
    """The files an artifact consists of: every regular file but the manifest (and the
    staging mark, which is still there while ``finish_manifest`` lists the files)."""
    return [f for f in sorted(Path(directory).iterdir())
            if f.is_file() and f.name not in (MANIFEST, STAGING_MARK)]


def file_table(directory: Path) -> dict[str, FileEntry]:
    """Size and sha256 of every file in ``directory`` except the manifest, by name."""
    return {f.name: FileEntry(f.stat().st_size, sha256_file(f))
            for f in artifact_files(directory)}


def verify_files(directory: Path, manifest: Manifest, full: bool = True) -> list[str]:
    """What differs between ``directory``'s files and the table its manifest recorded.

    The cheap check (``full=False``) compares names and sizes; the full one also each
    file's sha256. An empty list means the files are the ones that were written.
    """
    recorded = manifest.files
    present = {f.name: f for f in artifact_files(directory)}
    problems = [f"{n} is missing" for n in sorted(set(recorded) - set(present))]
    problems += [f"{n} was added" for n in sorted(set(present) - set(recorded))]
    for name in sorted(set(recorded) & set(present)):
        size = present[name].stat().st_size
        if size != recorded[name].bytes:
            problems.append(f"{name} has {size} bytes, the manifest recorded "
                            f"{recorded[name].bytes}")
        elif full and sha256_file(present[name]) != recorded[name].sha256:
            problems.append(f"{name}'s sha256 differs from the manifest's")
    return problems


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest of the artifact in ``directory``; None when there is no manifest.

    Raises:
        UsageError: a manifest.json that is not a slimbench artifact manifest of this format.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    from slimbench.files import read_json

    return Manifest.from_dict(read_json(path, "artifact manifest"), str(path))


def artifact_trait(directory: Path) -> str | None:
    """Why ``directory``, which has no manifest, is a slimbench artifact all the same (None:
    it is not one).

    An artifact without its manifest would load as something else: a torch int8 artifact of
    version 2 stores its float parent's weights and is quantized at load time as the manifest
    says, so it would be measured as the float model, under no recipe. A user's own checkpoint
    has no manifest either and must load as before, so only what slimbench alone makes counts: a
    folder named like an artifact cache's (``<key>-<step>``, a 20-hex key), a step folder
    that a ``compress --recipe`` output's ``recipe.json`` lists, and an ONNX model with a
    config.json and no safetensors, as ``export_onnx`` writes (slimbench reads ONNX models only
    as its own artifacts; without the manifest it would say "holds no weights").
    """
    directory = Path(directory).resolve()
    if CACHE_FOLDER.fullmatch(directory.name):
        return "it is named like an artifact cache folder, <key>-<step>"
    try:
        recipe = json.loads((directory.parent / "recipe.json").read_text(encoding="utf-8"))
        listed = recipe.get("artifacts") if isinstance(recipe, dict) else None
    except (OSError, ValueError):  # no recipe.json (the usual case), or not one of ours
        listed = None
    if isinstance(listed, list) and directory.name in listed:
        return f"it is a step of the recipe output {directory.parent}"
    if ((directory / "config.json").is_file() and any(directory.glob("*.onnx"))
            and not any(directory.glob("*.safetensors"))):
        return "it holds an ONNX model"
    if (directory / "int8_linears.safetensors").is_file():  # torch_int8_store.INT8_FILE
        return "it holds torch int8 weights, as torch_dynamic_int8 writes them"
    return None


def finish_manifest(directory: Path, fields: dict[str, Any]) -> Manifest:
    """Add the file table and totals to the manifest ``fields`` (JSON: what ``run_step``
    records and the step's ``StepReport.to_dict()``) and write it into ``directory``."""
    files = file_table(directory)
    data = {
        "slimbench_artifact": FORMAT_VERSION, "slimbench_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(), **fields,
        "files": {n: f.to_dict() for n, f in files.items()},
        "bytes_on_disk": sum(f.bytes for f in files.values()),
    }
    manifest = Manifest.from_dict(data, str(directory / MANIFEST))  # checked before written
    atomic.write_json(directory / MANIFEST, manifest.to_dict())
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
    tmp = make_staging(out.parent, out.name)
    try:
        yield tmp
        ordinary_modes(tmp)
        (tmp / STAGING_MARK).unlink()  # it marks a folder being written, not an artifact
        os.replace(tmp, out)  # atomic on one filesystem; fails if `out` appeared meanwhile
    except Exception as e:
        _blame_full_disk(e, tmp, out)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _blame_full_disk(e: Exception, tmp: Path, out: Path) -> None:
    """Raise ENOSPC for ``out`` if the write failed on a (nearly) full disk.

    Not every writer reports a full disk: the TorchScript ONNX exporter's C++ writer left a
    truncated model.onnx without an error, and the failure came later, from the parser
    ("Wire format was corrupt"). Measured before the staging folder is removed."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return
    try:
        free = shutil.disk_usage(tmp).free
    except OSError:
        return
    if free < LOW_DISK_BYTES:
        raise OSError(errno.ENOSPC, f"No space left on device ({free / 2**20:.1f} MiB free; "
                      f"the step failed with {type(e).__name__}: {e})", str(out)) from e


def make_staging(parent: Path, out_name: str) -> Path:
    """A new, marked staging folder ``.<out_name>.<host>-<pid>.<random>.partial`` in
    ``parent``. The name says whose it is (for ``_remove_dead_staging``); the mark, written
    before anything else, says that slimbench made it and for which ``out_name``: only such
    a folder is ever removed as a leftover. (A process killed between the two leaves an
    empty unmarked folder, which stays: a user's folder of that name would look the same.)"""
    owner = f"{socket.gethostname()}-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out_name}.{owner}.", suffix=".partial"))
    try:
        atomic.write_json(tmp / STAGING_MARK, {"out": out_name, "owner": owner})
        os.chmod(tmp, 0o777 & ~atomic.umask())  # mkdtemp makes 0700; this is an ordinary folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def staging_owner(path: Path) -> str | None:
    """The ``out_name`` whose staging folder ``path`` is, if ``make_staging`` made it (its
    name pattern and its mark agree); None for anything else, however it is named."""
    if path.is_symlink() or not path.is_dir() or not path.name.endswith(".partial"):
        return None
    try:
        mark = json.loads((path / STAGING_MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    out = mark.get("out") if isinstance(mark, dict) else None
    return out if isinstance(out, str) and path.name.startswith(f".{out}.") else None


def ordinary_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the mode a plain ``open``/``mkdir`` gives under
    the umask. Some writers make private files (safetensors saves through a 0600 temp file),
    which the other users of a shared cache could then not read."""
    umask = atomic.umask()
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for name, mode in [(d, 0o777) for d in dirs] + [(f, 0o666) for f in files]:
            path = os.path.join(root, name)
            if not os.path.islink(path):  # chmod would follow it out of the artifact
                os.chmod(path, mode & ~umask)


def _remove_dead_staging(out: Path) -> None:
    """Remove staging folders for ``out`` left by a killed process of this host (the
    name says whose: ``.<out>.<host>-<pid>.<random>.partial``). Another host's are left
    alone: its process cannot be seen from here. Unmarked ones are not slimbench's."""
    mine = f".{out.name}.{socket.gethostname()}-"
    for p in out.parent.glob(f".{glob.escape(out.name)}.*.partial"):
        pid = p.name[len(mine):].split(".", 1)[0] if p.name.startswith(mine) else ""
        if pid.isdigit() and not _alive(int(pid)) and staging_owner(p) == out.name:
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True

"""A content-addressed, verified, concurrency-safe cache of recipe artifacts.

An artifact's key hashes everything that determines it: the input model's *content* (the
sha256 of a local directory's files, of a hub snapshot's files, of the embedded reference;
the shape, seed and library versions of a random-weight shape), the step's name, its
validated config (a teacher spec replaced by the teacher's content), the step's code version
and the versions of slimbench and the libraries that write artifacts. A chain's step ``i``
hashes step ``i - 1``'s key. So editing a checkpoint, a parameter or the code builds a new
artifact, and nothing else does.

Cached artifacts are checked against their manifest before use: sizes every time, the full
sha256 once per cache object (one run), and again whenever the size check fails. A mismatch
is rebuilt with one warning. Builds of one key are serialized across processes with a file
lock; a ``.partial`` staging directory whose builder died is removed by the next process that
takes that key's lock (or sweeps the cache at start). The cache owns only what it made: its
``<key>-<step>`` folders, their lock files and their marked staging folders
(``compress/artifact.py``); anything else in the folder (a user's own ``.notes.partial``) is
never touched.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from slimbench import __version__
from slimbench.compress.artifact import (
    CACHE_FOLDER,
    KEY_CHARS,
    MANIFEST,
    make_staging,
    read_manifest,
    sha256_file,
    staging_owner,
    verify_files,
)
from slimbench.compress.steps import STEPS, make_config, run_step
from slimbench.errors import ModelLoadError, SlimbenchError
from slimbench.files import check_output_dir
from slimbench.versions import package_versions

log = logging.getLogger(__name__)
# libraries whose version can change the bytes an artifact step writes
LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime-gpu", "onnxruntime", "torch-pruning")


def _versions() -> dict[str, str | None]:
    return package_versions(LIBRARIES)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def directory_digest(path: Path) -> str:
    """sha256 over the names and contents of a directory's top-level files (a HF model
    directory is flat; hidden files such as editor or VCS leftovers are ignored)."""
    files = sorted(f for f in Path(path).iterdir() if f.is_file() and not f.name.startswith("."))
    return _digest([(f.name, sha256_file(f)) for f in files])


@dataclasses.dataclass(frozen=True)
class SourceIdentity:
    """What a model spec *is*, by content: what its cache keys hash.

    Attributes:
        source: reference, shape, directory (a local folder) or hub.
        digest: ``directory_digest`` of its files (a hub id's snapshot); None for a shape.
        name: the shape's label or the hub id; None for the others.
        seed: (shape) the seed of its random weights.
        versions: (shape) the library versions its random weights depend on.
    """

    source: str
    digest: str | None = None
    name: str | None = None
    seed: int = 0
    versions: dict[str, str | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The mapping cache keys have always hashed (its keys name the source)."""
        if self.source == "shape":
            return {"shape": self.name, "seed": self.seed, "versions": self.versions}
        if self.source == "hub":
            return {"hub": self.name, "snapshot": self.digest}
        return {self.source: self.digest}  # reference, directory


def source_identity(spec: str) -> SourceIdentity:
    """What a model spec *is*, by content, for cache keys.

    Raises:
        ModelLoadError: a spec that names nothing loadable (missing path, unknown hub id).
    """
    from slimbench.compress.loader import spec_source
    from slimbench.compress.reference import REFERENCE_DIR
    from slimbench.compress.shapes import ShapeSpec

    source = spec_source(spec)
    if source == "reference":
        return SourceIdentity("reference", directory_digest(REFERENCE_DIR))
    if source == "shape":
        # random weights from a seed: the same shape, seed and libraries give the same model
        return SourceIdentity("shape", name=ShapeSpec.parse(spec).label, seed=0,
                              versions=_versions())
    if source == "path":
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"{spec!r} is a file; expected a Hugging Face model directory")
        return SourceIdentity("directory", directory_digest(path))
    from slimbench.compress.hub import fetch_snapshot

    return SourceIdentity("hub", directory_digest(fetch_snapshot(spec)), name=spec)


class ArtifactCache:
    """Artifacts under ``root``, one folder per key: ``<key>-<step>``.

    Args:
        root: the cache directory (shared by runs, and by concurrent processes).
        say: where the one-line progress and warning messages go.
    """

    def __init__(self, root: Path, say=print) -> None:
        self.root = Path(root)
        check_output_dir(self.root, "artifact cache")
        self.say = say
        self._identity: dict[str, str] = {}  # spec -> content digest, once per cache object
        self._verified: set[str] = set()  # folders whose full sha256 matched in this run
        self._failed: dict[str, Exception] = {}  # a key that failed once is not retried
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()

    def identity(self, spec: str) -> str:
        if spec not in self._identity:
            self._identity[spec] = _digest(source_identity(spec).to_dict())
        return self._identity[spec]

    def step_key(self, parent_key: str, name: str, params: dict) -> str:
        step = STEPS.get(name)
        config = dataclasses.asdict(make_config(step, params))
        teacher = config.get("teacher") if name == "distill" else None
        if teacher is not None:  # the teacher's content determines the student too
            config["teacher"] = self.identity(teacher)
        versions = _versions()
        if step.libraries:  # an optional engine's converter (Step.libraries)
            versions |= package_versions(step.libraries)
        return _digest({"parent": parent_key, "step": name, "config": config,
                        "step_version": step.version, "slimbench": __version__,
                        "versions": versions})[:KEY_CHARS]

    def build(self, model: str, recipe, label: str = "") -> str:
        """The path of the artifact that ``recipe`` makes from ``model``, built as needed.

        Every prefix of the recipe is its own cached artifact, so recipes that share steps
        (export once, quantize two ways) build them once.
        """
        if not recipe:
            return model  # nothing to build (and no need to hash, or fetch, the model)
        parent, key = model, self.identity(model)
        for i, (name, params) in enumerate(recipe, 1):
            key = self.step_key(key, name, params)
            folder = self.root / f"{key}-{name}"
            if folder.name in self._failed:  # variants sharing a failed prefix fail alike
                raise self._failed[folder.name]
            with self._locked(folder, label):
                if not self._usable(folder):
                    self._remove_partials(folder)
                    self.say(f"[{label} {i}/{len(recipe)}] {name} {params or ''} <- {parent}")
                    try:
                        run_step(name, params, parent, folder)
                    except Exception as e:
                        self._failed[folder.name] = e
                        raise
                    self._verified.add(folder.name)  # hashed as it was written
            parent = str(folder)
        return parent

    def key(self, model: str, recipe) -> str:
        """The content key of what ``recipe`` makes from ``model`` (the model's own content
        digest for an empty recipe), computed without building anything."""
        key = self.identity(model)
        for name, params in recipe:
            key = self.step_key(key, name, params)
        return key

    @contextmanager
    def _locked(self, folder: Path, label: str):
        lock = FileLock(str(self.root / f".{folder.name}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:  # say why nothing seems to happen, then wait for it
            self.say(f"[{label}] waiting for another process that is building {folder.name}")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _usable(self, folder: Path) -> bool:
        """Whether ``folder`` holds a finished artifact that matches its manifest. A damaged
        one is moved aside (under the key's lock) so that it is rebuilt."""
        if not folder.is_dir():
            return False
        try:
            manifest = read_manifest(folder)
        except SlimbenchError as e:
            problems = [str(e)]
        else:
            if manifest is None:
                problems = [f"no {MANIFEST}"]
            else:
                full = folder.name not in self._verified
                problems = verify_files(folder, manifest, full=False)
                if not problems and full:
                    problems = verify_files(folder, manifest, full=True)
        if not problems:
            self._verified.add(folder.name)
            return True
        self.say(f"warning: cached artifact {folder} does not match its manifest "
                 f"({'; '.join(problems[:3])}); rebuilding it")
        self._discard(folder)
        return False

    def _discard(self, folder: Path) -> None:
        # moved into a marked staging folder first: a process killed while removing it
        # leaves a leftover that the next sweep knows to be the cache's own
        trash = make_staging(self.root, folder.name)
        folder.rename(trash / folder.name)
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_partials(self, folder: Path) -> None:
        # staging directories of this key are only made under its lock, which we hold: any
        # left over belong to a builder that died
        for p in self.root.glob(f".{glob.escape(folder.name)}.*.partial"):
            if staging_owner(p) == folder.name:
                log.info("removing %s, left by a build that did not finish", p)
                shutil.rmtree(p, ignore_errors=True)

    def sweep(self) -> None:
        """Remove staging directories whose builder is gone (their key's lock is free).
        Only the cache's own are looked at: a folder must carry its mark and name a cache
        folder, so no lock file is made, and nothing removed, for anyone else's."""
        for p in self.root.glob(".*.partial"):
            name = staging_owner(p)
            if name is None or not CACHE_FOLDER.fullmatch(name):
                continue
            lock = FileLock(str(self.root / f".{name}.lock"))
            try:
                with lock.acquire(timeout=0):
                    self._remove_partials(self.root / name)
            except Timeout:
                continue  # a live build of that key: its staging directory stays

"""The results schema: every result slimbench writes is one of four typed documents.

- ``CellResult``: one cell of a run (``RUN/cells/<cell>.json``; ``latency_cell``'s return);
- ``EvalResult``: what ``slimbench eval --out`` writes;
- ``ResultsFile``: a run's tidy rows (``RUN/results.json``, committed baselines);
- ``SearchResult``: what ``slimbench search`` tried and chose (``OUT/search.json``,
  ``search.py``).

Each carries ``schema_version`` (``SCHEMA_VERSION``) and ``document`` (which of the four).
Producers build these types and write ``to_dict()``; consumers read with ``load_document``,
which checks every field and names the first one that does not fit. Files of another
version are refused in one line: their fields may mean something else.

``python -m slimbench.schema`` prints the JSON Schema of the four, generated from these
types (committed as ``slimbench/schema/results.schema.json``, for other tools; slimbench
validates with the types themselves).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from slimbench.errors import UsageError
from slimbench.schema.codec import SchemaError, Typed, json_schema
from slimbench.schema.measurements import (  # noqa: F401 - the schema's parts, named here too
    Fidelity,
    Interval,
    Latency,
    Measurement,
    Memory,
    QualityScore,
    Scenario,
    Score,
)
from slimbench.schema.search import SearchResult
from slimbench.schema.version import SCHEMA_VERSION  # noqa: F401 - named here too

RESULTS_FORMAT = 1  # results.json's own marker, older than schema_version: kept, so that
# results files written before the schema (the committed demo baseline) still load as version 1


@dataclasses.dataclass
class Artifact(Typed):
    """What was loaded and measured (``load_artifact``'s record of it: ``LoadedModel.info``).

    Attributes:
        spec: the model spec or artifact path that was loaded.
        kind: reference, local, hub or shape.
        path: the folder read, or null (in-memory shape models).
        random_weights: true for random-weight shape models (timed, never scored).
        model_type: the Hugging Face model type.
        parameters: parameter count (tied weights once).
        nonzero_parameters: parameters that are not exactly zero.
        bytes_on_disk: bytes of the weight files, or null.
        dtype: dtype of the weights as loaded.
        device: where they were loaded.
        weights_sha256: sha256 of the weight files that were measured, or null.
        recipe: the steps that made the artifact.
        manifest: the artifact's manifest (recipe, parent, audit), or null.
    """

    spec: str
    kind: str
    path: str | None
    random_weights: bool
    model_type: str
    parameters: int
    nonzero_parameters: int
    bytes_on_disk: int | None
    dtype: str
    device: str
    weights_sha256: str | None
    recipe: list[str] = dataclasses.field(default_factory=list)
    manifest: dict | None = None


@dataclasses.dataclass
class CellInfo(Typed):
    """Which cell: what it was asked to measure, known whatever its status.

    Attributes:
        id: the cell's id (its file name): variant--device.
        variant: the suite's variant.
        model: the variant's input model.
        recipe: the variant's steps.
        device: cpu, cuda or cuda:N.
        backend: torch or onnxruntime (null until an artifact was loaded).
        artifact: path of the artifact the cell measures (null if it was never built).
        content_key: the artifact cache's key: input weights, steps, configs and code
            versions hashed (null if unknown).
    """

    id: str
    variant: str
    model: str
    recipe: list[str]
    device: str
    backend: str | None = None
    artifact: str | None = None
    content_key: str | None = None


def cell_id(variant: str, device: str) -> str:
    """A cell's id, and its file's name in ``RUN/cells/``: ``<variant>--<device>``."""
    return f"{variant}--{device.replace(':', '')}"


def suite_cell_ids(suite: dict) -> set[str]:
    """The ids of the cells a ``suite.json`` asks for (variants x devices)."""
    return {cell_id(v["name"], d) for v in suite.get("variants") or []
            for d in suite.get("devices") or []}


@dataclasses.dataclass
class CellResult(Typed):
    """One cell: an artifact on a backend and device; its latency, memory and quality.

    Attributes:
        cell: which cell.
        status: ok, failed or skipped; only an ok cell has figures.
        reason: why the cell failed or was skipped.
        traceback: the end of the traceback of a failed cell, when there is one.
        seconds: wall time of the cell's process.
        threads: intra-op threads the cell ran with.
        artifact: what was loaded and measured, with the sha256 of its weight files.
        environment: the machine, versions, threads and seeds the figures come from.
        latency: the latency scenarios.
        memory: memory and size figures.
        quality: task name to its scores.
        warnings: what makes a figure of this cell doubtful.
        examples_sha256: sha256 of the per-example file its quality scores name, so that an
            edited or truncated one is detected; null where none was written (or in files
            written before it was recorded).
        document: always "cell".
        schema_version: the results schema's version.
    """

    cell: CellInfo
    status: Literal["ok", "failed", "skipped"]
    reason: str | None = None
    traceback: str | None = None
    seconds: float | None = None
    threads: int | None = None
    artifact: Artifact | None = None
    environment: dict | None = None
    latency: Latency | None = None
    memory: Memory | None = None
    quality: dict[str, QualityScore] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    examples_sha256: str | None = None
    document: Literal["cell"] = "cell"
    schema_version: int = SCHEMA_VERSION

    def check(self):
        if self.status != "ok" and not self.reason:
            return "reason", f"text saying why the cell was {self.status}", self.reason
        return None


@dataclasses.dataclass
class EvalResult(Typed):
    """What ``slimbench eval --out`` writes.

    Attributes:
        model: what was loaded and scored.
        tasks: task name to its scores.
        environment: the machine, versions and threads.
        examples_file: the per-example outputs of every task (JSON lines), beside this file.
        threads: intra-op threads.
        fidelity: agreement with --baseline, when one was given.
        document: always "eval".
        schema_version: the results schema's version.
    """

    model: Artifact
    tasks: dict[str, QualityScore]
    environment: dict
    examples_file: str
    threads: int | None = None
    fidelity: Fidelity | None = None
    document: Literal["eval"] = "eval"
    schema_version: int = SCHEMA_VERSION


@dataclasses.dataclass
class Row(Typed):
    """One results row: one metric of one cell, what CSV, HTML and the gate read.

    Attributes:
        cell: the cell's id.
        variant: the suite's variant.
        backend: torch or onnxruntime.
        device: cpu, cuda or cuda:N.
        kind: latency, memory, size or quality: the gate's default allowance.
        metric: e.g. decode_ms_per_token@128, peak_rss_bytes, perplexity.perplexity.
        value: the median (latency) or the value.
        ci_low: low end of the 95% interval, or null.
        ci_high: high end of the 95% interval, or null.
        higher_is_better: the metric's direction.
        unit: the value's unit ("" for counts and scores).
    """

    cell: str | None
    variant: str
    backend: str | None
    device: str | None
    kind: Literal["latency", "memory", "size", "quality"]
    metric: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    higher_is_better: bool
    unit: str | None


def valid_suite(suite) -> bool:
    """Is ``suite`` shaped like ``suite.json`` (a mapping whose variants are named mappings)?"""
    variants = suite.get("variants", []) if isinstance(suite, dict) else None
    return isinstance(variants, list) and all(
        isinstance(v, dict) and isinstance(v.get("name"), str) for v in variants)


SUITE_SHAPE = "a mapping as in suite.json, with variants a list of {name, model, recipe, quality}"


@dataclasses.dataclass
class ResultsFile(Typed):
    """A run's results: its rows and the suite that made them (``results.json``).

    Attributes:
        rows: one per (cell, metric).
        suite: what suite.json holds, so a gate can tell whether two runs measured the same
            thing; null in files written before it was recorded.
        environments: per cell id, the environment fingerprint its figures come from
            (``slimbench/fingerprint.py``: CPU model, kernel ISA, threads, GPU, library
            versions), so a gate compares latency only between matching machines; empty in
            files written before it was recorded.
        slimbench_results: the rows format (1), older than schema_version.
        document: always "results".
        schema_version: the results schema's version.
    """

    rows: list[Row]
    suite: dict | None = None
    environments: dict[str, dict | None] = dataclasses.field(default_factory=dict)
    slimbench_results: Literal[1] = RESULTS_FORMAT
    document: Literal["results"] = "results"
    schema_version: int = SCHEMA_VERSION

    def check(self):
        if self.suite is not None and not valid_suite(self.suite):
            return "suite", SUITE_SHAPE, self.suite
        return None


DOCUMENTS = {"cell": CellResult, "eval": EvalResult, "results": ResultsFile,
             "search": SearchResult}
Document = CellResult | EvalResult | ResultsFile | SearchResult


def load_document(data: Any, source: str | Path, want: str | None = None) -> Document:
    """The typed document of parsed JSON ``data`` read from ``source``.

    ``want`` (cell, eval, results, search) refuses the other kinds. A results file without
    ``schema_version`` (written before it existed) reads as version 1: its rows format is
    unchanged.

    Raises:
        UsageError: one line naming the file, and the field with what it must be and what it
            is; or the schema version, when it is not this slimbench's.
    """
    if not isinstance(data, dict):
        raise UsageError(f"{source}: not a slimbench result (a JSON object), got "
                         f"{type(data).__name__}")
    kind = data.get("document", "results" if "slimbench_results" in data else None)
    if not isinstance(kind, str | None):  # e.g. [1]: not a name, and unhashable
        raise UsageError(f"{source}: document must be one of {', '.join(map(repr, DOCUMENTS))}, "
                         f"got {kind!r}")
    version = data.get("schema_version", 1 if kind == "results" else None)
    if version != SCHEMA_VERSION:
        said = "no schema_version (written before the results schema existed, or not a " \
               "slimbench result)" if version is None else f"schema_version {version!r}"
        raise UsageError(f"{source}: {said}; this slimbench reads schema version "
                         f"{SCHEMA_VERSION}")
    if kind not in DOCUMENTS or want and kind != want:
        wanted = [want] if want else list(DOCUMENTS)
        raise UsageError(f"{source}: document must be {' or '.join(map(repr, wanted))}, "
                         f"got {kind!r}")
    try:
        return DOCUMENTS[kind].from_dict(data)
    except SchemaError as e:
        raise UsageError(f"{source}: {e}") from None


def load_file(path: str | Path, want: str | None = None) -> Document:
    """``load_document`` of the JSON file ``path``."""
    from slimbench.files import read_json

    return load_document(read_json(path, "result file"), path, want)


def generate() -> dict:
    """The JSON Schema of the four documents (``slimbench/schema/results.schema.json``)."""
    return json_schema(
        [CellResult, EvalResult, ResultsFile, SearchResult], title="slimbench results",
        description=f"slimbench results schema version {SCHEMA_VERSION}: a cell result, an "
                    "eval --out file, a run's results file or a search's search.json. "
                    "Generated from slimbench/schema/documents.py and search.py by "
                    "`python -m slimbench.schema`. "
                    "Every number is finite: NaN and Infinity (which Python's json would "
                    "write) are refused.")


def schema_text() -> str:
    return json.dumps(generate(), indent=2) + "\n"

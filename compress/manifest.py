"""The records of an artifact's ``manifest.json``: what a step reports about the child it wrote
(``StepReport``, with its ``Parity``), and the whole manifest as written and read (``Manifest``).

``to_dict`` of each writes the manifest's JSON exactly as it has always been written: manifests
in existing caches, and the embedded reference's, read the same, and nothing that is hashed
depends on these Python types. Each step's own audit (quantization coverage, sparsity,
structure, training) is a dataclass beside its step; here it is any ``Record``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from slimbench.errors import UsageError
from slimbench.schema.codec import SchemaError, Typed

FORMAT_VERSION = 1  # manifest.json's ``slimbench_artifact``


class Record(Protocol):
    """A step's evidence (an audit, a training record) as the manifest holds it."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Parity(Typed):
    """A child against its parent on the same prompts (``parity.parity``).

    Attributes:
        max_abs_logit_diff: largest |child logit - parent logit| over every prompt position.
        mean_abs_logit_diff: mean of the same.
        top1_agreement: share of positions whose top token is the same.
        greedy_identical: greedy continuations that match token for token.
        greedy_prompts: greedy continuations compared.
        greedy_new_tokens: tokens per greedy continuation.
        prompts: shape of the prompt batch, [prompts, tokens].
        padded_max_abs_logit_diff: (export_onnx) the same with left/right padding masked.
        target_max_abs_logit_diff: (export_onnx) the bound the export is held to.
        decode_max_abs_logit_diff: (ort_optimize) one decode step after a past.
    """

    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    greedy_identical: int
    greedy_prompts: int
    greedy_new_tokens: int
    prompts: list[int]
    padded_max_abs_logit_diff: float | None = None
    target_max_abs_logit_diff: float | None = None
    decode_max_abs_logit_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``parity``: the figures a step measured (unmeasured ones left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class StepReport:
    """What a recipe step writes about its child: the manifest's fields besides the ones
    ``run_step`` adds (step, config, recipe, parent, random_weights, files, bytes_on_disk).

    Attributes:
        format: ``hf`` (a Hugging Face folder) or ``onnx``.
        parameters: the child's parameter count (tied weights once).
        nonzero_parameters: its parameters that are not exactly zero.
        dtypes: what is stored and computed in which dtype, in words (``weights``,
            ``activations``, ``block_weights``).
        parity: the child against its parent.
        load_transform: a step that ``load_artifact`` re-applies (torch dynamic int8).
        load_dtype: the dtype the child loads in by default (half casts).
        onnx_file: the graph's file name (ONNX children).
        opset: the graph's ONNX opset (ONNX children; null when the parent did not record it).
        attention: how attention was exported (``export_onnx``).
        graph: node count per op type of the child's graph.
        bytes_vs_parent: the child's .onnx file size over its parent's.
        quantization: the quantization coverage audit.
        sparsity: the unstructured-sparsity audit.
        structure: the structured-pruning audit.
        fusions: the fusions ONNX Runtime's optimizer applied.
        teacher: the teacher of a distillation (null when the loss used none).
        student_layers: layers of the distilled student.
        training: the distillation's training record.
    """

    format: str
    parameters: int
    nonzero_parameters: int
    dtypes: dict[str, str]
    parity: Parity | None = None
    load_transform: str | None = None
    load_dtype: str | None = None
    onnx_file: str | None = None
    opset: int | None = None
    attention: str | None = None
    graph: dict[str, int] | None = None
    bytes_vs_parent: float | None = None
    quantization: Record | None = None
    sparsity: Record | None = None
    structure: Record | None = None
    fusions: Record | None = None
    teacher: Record | None = None
    student_layers: int | None = None
    training: Record | None = None

    def to_dict(self) -> dict[str, Any]:
        """The manifest fields: unset ones are left out, except an ONNX child's ``opset`` and
        a distillation's ``teacher``, which are written as null (as they always were)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kept = ((f.name == "opset" and self.format == "onnx")
                    or (f.name == "teacher" and self.training is not None))
            if value is None and not kept:
                continue
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out


@dataclasses.dataclass(frozen=True)
class FileEntry(Typed):
    """One file of an artifact.

    Attributes:
        bytes: its size.
        sha256: the sha256 of its content (hex).
    """

    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class ParentRef(Typed):
    """The model a step was applied to.

    Attributes:
        spec: its model spec, or the artifact's final path for a recipe's earlier step.
        weights_sha256: sha256 of its weight files (null for an in-memory shape model).
        manifest_sha256: sha256 of its manifest.json when it is an artifact: links a chain.
        parameters: its parameter count.
    """

    spec: str
    weights_sha256: str | None
    manifest_sha256: str | None = None  # absent from the first manifests
    parameters: int | None = None


_HEAD = ("slimbench_artifact", "slimbench_version", "created", "step", "config", "recipe",
         "parent", "random_weights", "files", "bytes_on_disk")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """An artifact's ``manifest.json``: what the artifact is, measured rather than claimed.

    Attributes:
        files: per file name (the manifest excepted), its size and sha256.
        bytes_on_disk: the files' bytes together.
        recipe: the steps that made the artifact, in order.
        step: the step that wrote it (null only in manifests not written by ``run_step``).
        config: that step's validated config.
        parent: what the step was applied to.
        random_weights: the chain started from random weights (a shape model).
        report: the step's own fields as written (``StepReport.to_dict()``, or a plugin
            step's mapping): format, parameters, dtypes, parity and its audits. Their keys
            depend on the step (and on the step's version), so they stay JSON.
        slimbench_artifact: the manifest format's version.
        slimbench_version: the slimbench that wrote it.
        created: when (ISO 8601, UTC).
    """

    files: dict[str, FileEntry]
    bytes_on_disk: int
    recipe: list[str] = dataclasses.field(default_factory=list)
    step: str | None = None
    config: dict[str, Any] | None = None
    parent: ParentRef | None = None
    random_weights: bool | None = None
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    slimbench_artifact: int = FORMAT_VERSION
    slimbench_version: str | None = None
    created: str | None = None

    @property
    def format(self) -> str:
        """``hf`` or ``onnx``."""
        return self.report.get("format", "hf")

    @property
    def parameters(self) -> int | None:
        return self.report.get("parameters")

    @property
    def nonzero_parameters(self) -> int | None:
        return self.report.get("nonzero_parameters")

    @property
    def onnx_file(self) -> str | None:
        return self.report.get("onnx_file")

    @property
    def load_transform(self) -> str | None:
        return self.report.get("load_transform")

    @property
    def load_dtype(self) -> str | None:
        return self.report.get("load_dtype")

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``manifest.json``, as it was read or written."""
        head: dict[str, Any] = {
            "slimbench_artifact": self.slimbench_artifact,
            "slimbench_version": self.slimbench_version, "created": self.created,
            "step": self.step, "config": self.config, "recipe": list(self.recipe),
            "parent": self.parent.to_dict() if self.parent else None,
            "random_weights": self.random_weights,
            "files": {n: f.to_dict() for n, f in self.files.items()},
            "bytes_on_disk": self.bytes_on_disk}
        # a field that was never written (a manifest made outside run_step) stays absent
        return {k: v for k, v in head.items() if v is not None} | self.report

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> Manifest:
        """The typed manifest of parsed JSON ``data`` read from ``source``.

        Raises:
            UsageError: not a slimbench artifact manifest of this format version, or a field
                that does not fit (named).
        """
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise UsageError(f"{source} is not a slimbench artifact manifest (not a mapping "
                             "with a 'files' table)")
        if data.get("slimbench_artifact") != FORMAT_VERSION:
            raise UsageError(f"{source} is not a slimbench artifact manifest (version "
                             f"{data.get('slimbench_artifact')!r}, expected {FORMAT_VERSION})")
        try:
            return cls(
                files={n: FileEntry.from_dict(f, f"files.{n}") for n, f in data["files"].items()},
                bytes_on_disk=_get(data, "bytes_on_disk", int),
                recipe=_get(data, "recipe", list, []), step=_get(data, "step", str),
                config=_get(data, "config", dict),
                random_weights=_get(data, "random_weights", bool),
                parent=ParentRef.from_dict(data["parent"], "parent") if data.get("parent")
                else None,
                slimbench_version=_get(data, "slimbench_version", str),
                created=_get(data, "created", str), slimbench_artifact=FORMAT_VERSION,
                report={k: v for k, v in data.items() if k not in _HEAD})
        except SchemaError as e:
            raise UsageError(f"{source}: {e}") from None


def _get(data: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = data.get(key, default)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                              and kind is int):
        raise SchemaError(key, kind.__name__, value)
    return value

"""What the steps share: writing a child model, carrying side files, ONNX child fields."""

from __future__ import annotations

import shutil
from pathlib import Path

from slimbench.compress.artifact import MANIFEST
from slimbench.compress.loader import LoadedModel
from slimbench.compress.manifest import Record, StepReport
from slimbench.compress.onnx_export import ONNX_FILE
from slimbench.compress.onnx_model import OnnxModel, onnx_logits_fn, onnx_op_counts
from slimbench.compress.parity import parity, reference_prompts


def save_model(model, tokenizer, out: Path) -> None:
    """Write a step's torch child (safetensors) and its tokenizer, if any, into ``out``."""
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def copy_side_files(src: Path, dst: Path) -> None:
    """Copy config and tokenizer files: they travel with every ONNX artifact."""
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith((ONNX_FILE, MANIFEST)):
            shutil.copy2(f, dst / f.name)


def onnx_child_fields(parent: LoadedModel, dst: Path, weights: str, activations: str,
                      quantization: Record | None = None) -> StepReport:
    """The report of an ONNX child ``dst`` made from the ONNX ``parent``.

    Args:
        weights: the child's weight dtype, in words (``"int8 (QDQ)"``).
        activations: the child's activation dtype, in words.
        quantization: the coverage audit of a quantizing step (None: the field is left out).

    Returns:
        format, sizes, dtypes, the graph's op counts and logits parity against the parent.
    """
    src = parent.model.path
    child = OnnxModel(dst, parent.model.config)
    prompts = reference_prompts(parent.tokenizer, parent.model.config.vocab_size)
    opset = parent.manifest.report.get("opset") if parent.manifest else None
    return StepReport(
        format="onnx", onnx_file=ONNX_FILE, opset=opset, parameters=parent.info.parameters,
        nonzero_parameters=parent.info.nonzero_parameters,
        dtypes={"weights": weights, "activations": activations},
        graph=onnx_op_counts(dst), quantization=quantization,
        bytes_vs_parent=dst.stat().st_size / src.stat().st_size,
        parity=parity(onnx_logits_fn(parent.model), onnx_logits_fn(child), prompts))

"""What kind of model a spec names, and which kinds each recipe step accepts.

A chain of steps is checked against these kinds before any model is loaded, so an ONNX graph
fed to a torch step (or a torch int8 artifact fed to ``export_onnx``) is refused in one line
instead of failing deep inside torch or the exporter after minutes of work. The check of a
chain (``steps.check_chain``) sits with the steps, which declare what they accept.
"""

from __future__ import annotations

from pathlib import Path

from slimbench.compress.artifact import read_manifest
from slimbench.compress.reference import REFERENCE_NAME

KINDS = {
    "torch": "a float32 torch model",
    "torch-int8": "a torch dynamic-int8 artifact (quantized again at load)",
    "torch-cast": "a float16/bfloat16 torch artifact",
    "onnx": "an ONNX artifact",
    "openvino": "an OpenVINO artifact",
    "ctranslate2": "a CTranslate2 artifact",
    "genai": "an ONNX Runtime GenAI artifact",
}


def spec_kind(spec: str) -> str:
    """The kind of model ``spec`` loads to, read from its manifest when it is an artifact."""
    path = Path(spec).expanduser()
    if spec == REFERENCE_NAME or spec.startswith("shape:") or not path.is_dir():
        return "torch"  # the embedded reference, a shape, a plain HF dir or a hub id
    manifest = read_manifest(path)
    if manifest is None:
        return "torch"
    if manifest.format in ("onnx", "openvino", "ctranslate2", "genai"):
        return manifest.format
    if manifest.load_transform:
        return "torch-int8"
    if (manifest.load_dtype or "float32") != "float32":
        return "torch-cast"
    return "torch"

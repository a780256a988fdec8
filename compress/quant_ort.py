"""ONNX Runtime INT8 quantization of an exported graph, with a node-level coverage audit."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from slimbench.errors import UsageError

log = logging.getLogger(__name__)
_BLOCK = re.compile(r"/h\.(\d+)/")
QUANTIZED_MATMULS = ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                     "QLinearMatMul")


@dataclasses.dataclass(frozen=True)
class OrtDynamicInt8Config:
    """Args:
        per_channel: one weight scale per output channel instead of per tensor.
        reduce_range: 7-bit weights (for CPUs without VNNI, where 8-bit can saturate).
        quantize_embeddings: also store the token/position embeddings (Gather) as int8; the
            embedding is most of a small GPT-2's bytes.
    """

    per_channel: bool = False
    reduce_range: bool = False
    quantize_embeddings: bool = True


def weight_matmuls(path: Path) -> dict[str, int]:
    """MatMul nodes with a constant weight operand, per block (``lm_head`` and ``other`` too)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits:
            counts[_where(node.name)] = counts.get(_where(node.name), 0) + 1
    return counts


def quantized_matmuls(path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in QUANTIZED_MATMULS:
            counts[_where(node.name)] = counts.get(_where(node.name), 0) + 1
    return counts


def _where(node_name: str) -> str:
    m = _BLOCK.search(node_name)
    if m:
        return m.group(1)
    return "lm_head" if "lm_head" in node_name else "other"


def ort_dynamic_int8(src: Path, dst: Path, config: OrtDynamicInt8Config) -> dict:
    """Quantize ``src`` into ``dst``; returns the audit (float vs int8 weight MatMuls)."""
    ops = ["MatMul"] + (["Gather"] if config.quantize_embeddings else [])
    root = logging.getLogger()
    level = root.level
    if not log.isEnabledFor(logging.INFO):  # ORT's quantizer advises via the root logger
        root.setLevel(logging.ERROR)
    try:
        _quantize(src, dst, ops, config)
    finally:
        root.setLevel(level)
    return audit_onnx_quantization(src, dst)


def _quantize(src: Path, dst: Path, ops: list[str], config: OrtDynamicInt8Config) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     per_channel=config.per_channel, reduce_range=config.reduce_range,
                     op_types_to_quantize=ops,
                     extra_options={"MatMulConstBOnly": True})  # weights only, not QK/AV


def audit_onnx_quantization(parent: Path, child: Path) -> dict:
    """Compare weight MatMuls of the parent graph with quantized MatMuls of the child."""
    before, after = weight_matmuls(parent), quantized_matmuls(child)
    left = weight_matmuls(child)
    blocks = sorted((k for k in before if k.isdigit()), key=int)
    return {
        "blocks": len(blocks),
        "block_matmuls": sum(before[k] for k in blocks),
        "block_matmuls_int8": sum(after.get(k, 0) for k in blocks),
        "per_block_int8": {k: after.get(k, 0) for k in blocks},
        "lm_head": "int8" if after.get("lm_head") else ("float" if before.get("lm_head")
                                                        else "absent"),
        "float_weight_matmuls_left": sum(left.values()),
    }


def require_onnx_coverage(audit: dict) -> None:
    from slimbench.compress.quant_torch import CompressionError

    if audit["block_matmuls_int8"] < audit["block_matmuls"]:
        raise CompressionError(
            f"ORT int8 quantized {audit['block_matmuls_int8']} of {audit['block_matmuls']} "
            f"block weight MatMuls: {audit['per_block_int8']}")


def check_parent_is_onnx(parent) -> None:
    from slimbench.compress.onnx_model import OnnxModel

    if not isinstance(parent.model, OnnxModel):
        raise UsageError("ORT quantization needs an ONNX artifact: run the export_onnx step "
                         "first and pass its directory")

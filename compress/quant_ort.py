"""ONNX Runtime INT8 quantization of an exported graph, with a node-level coverage audit."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from slimbench.compress.arch import Arch, arch_of, max_positions, n_layers
from slimbench.compress.calibration import calibration_batches
from slimbench.compress.loader import LoadedModel
from slimbench.compress.manifest import StepReport
from slimbench.compress.onnx_export import ONNX_FILE
from slimbench.compress.step_io import copy_side_files, onnx_child_fields
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.schema.codec import Typed

log = logging.getLogger(__name__)
# the output projection's node path in every family's export (/model/lm_head/MatMul), kept
# by the quantizers in the names they give (/model/lm_head/MatMul_quant)
LM_HEAD = re.compile(r"(?:^|/)lm_head/")
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


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ENTROPY_QUANTIZED_BINS = 128  # int8: the KL search folds the histogram into 128 bins


@dataclasses.dataclass(frozen=True)
class OrtStaticInt8Config:
    """Args:
        method: calibration method: ``minmax``, ``entropy`` or ``percentile``.
        samples: calibration sequences, drawn from the *training* split of the corpus.
        seq_len: tokens per calibration sequence, capped at the model's positions. The
            ranges must cover the positions the model will run at: positions never
            calibrated can exceed them and clip (on the reference, 256 positions, calibrating
            128 left static minmax at +0.38% perplexity on 256-token windows, 256 at +0.12%;
            docs/compression.md).
        per_channel: one weight scale per output channel.
        num_bins: histogram bins collected for ``entropy`` and ``percentile``. For entropy
            this must exceed the 128 quantized bins, otherwise the KL search has nothing to
            choose from and the ranges equal MinMax (ORT's default of 128 does exactly that).
        percentile: the covered share of the activation histogram for ``percentile``.
    """

    method: str = "minmax"
    samples: int = 32
    seq_len: int = 512
    per_channel: bool = False
    num_bins: int = 2048
    percentile: float = 99.999

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise UsageError(f"calibration method must be one of {CALIBRATION_METHODS}, "
                             f"got {self.method!r}")
        if self.samples < 1 or self.seq_len < 2:
            raise UsageError(f"samples must be >= 1 and seq_len >= 2, got {self.samples}, "
                             f"{self.seq_len}")
        if self.num_bins <= ENTROPY_QUANTIZED_BINS:
            raise UsageError(f"num_bins must exceed {ENTROPY_QUANTIZED_BINS}, got {self.num_bins}")
        if not 50 < self.percentile <= 100:
            raise UsageError(f"percentile must be in (50, 100], got {self.percentile}")


@dataclasses.dataclass(frozen=True)
class StaticCalibration(Typed):
    """The data static INT8 took its activation ranges from.

    Attributes:
        method: minmax, entropy or percentile.
        samples: calibration sequences used.
        seq_len: tokens per sequence (capped at the model's positions).
        num_bins: histogram bins (null for minmax).
        percentile: the covered share of the histogram (null unless percentile).
        source: where the sequences came from.
    """

    method: str
    samples: int
    seq_len: int
    num_bins: int | None
    percentile: float | None
    source: str


@dataclasses.dataclass(frozen=True)
class OnnxInt8Audit(Typed):
    """Weight MatMuls of the parent graph against quantized MatMuls of the child (the manifest's
    ``quantization`` of the ORT INT8 steps).

    Attributes:
        blocks: blocks with weight MatMuls in the parent graph.
        layers: the model's layers (every one must be a block above).
        expected_per_block: projections per block by the family's description.
        block_matmuls: the parent's block weight MatMuls.
        block_matmuls_int8: the child's quantized block MatMuls.
        per_block_int8: quantized MatMuls per block index.
        lm_head: the output projection in the child: int8, float or absent.
        float_weight_matmuls_left: float weight MatMuls left anywhere in the child.
        activation_matmuls_int8: MatMuls of two activations (attention's Q K^T and
            softmax V) that the child computes on int8 inputs: must be 0 (weights only).
        calibration: (static INT8) the calibration data.
    """

    blocks: int
    layers: int
    expected_per_block: int
    block_matmuls: int
    block_matmuls_int8: int
    per_block_int8: dict[str, int]
    lm_head: str
    float_weight_matmuls_left: int
    activation_matmuls_int8: int = 0
    calibration: StaticCalibration | None = None

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``quantization`` (``calibration`` only for static INT8)."""
        out = super().to_dict()
        if self.calibration is None:
            del out["calibration"]
        return out


def ort_static_int8(src: Path, dst: Path, config: OrtStaticInt8Config, onnx_model,
                    tokenizer) -> OnnxInt8Audit:
    """QDQ static INT8 of the weight MatMuls with activation ranges from calibration data."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    cfg = onnx_model.config
    # no longer than the position table (a learned one cannot be indexed past its end)
    seq_len = min(config.seq_len, max_positions(cfg))
    batches = calibration_batches(tokenizer, cfg.vocab_size, config.samples, seq_len)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            ids = next(self.it, None)
            if ids is None:
                return None
            return onnx_model.feeds(ids)  # what the graph declares, with an empty past

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.method]
    # the QDQ quantizer ignores MatMulConstBOnly (ORT 1.31: only the QOperator path reads
    # it) and would quantize attention's Q K^T and softmax V as well, on one int8 scale per
    # tensor for the probabilities: name the weight MatMuls instead
    weights = weight_matmul_names(src)
    with quiet_root_logger(), tempfile.TemporaryDirectory(prefix="slimbench-calib-") as tmp:
        cache = _calibrate(src, Reader(), method, config, Path(tmp))
        quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], per_channel=config.per_channel,
                        nodes_to_quantize=weights,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, calibration_cache_path=str(cache),
                        extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": True,
                                       "DefaultTensorType": onnx.TensorProto.FLOAT})
    calibration = StaticCalibration(
        method=config.method, samples=len(batches), seq_len=seq_len,
        num_bins=config.num_bins if config.method != "minmax" else None,
        percentile=config.percentile if config.method == "percentile" else None,
        source="corpus train split" if tokenizer is not None else "seeded random ids")
    return dataclasses.replace(audit_onnx_quantization(src, dst, cfg), calibration=calibration)


def _calibrate(src: Path, reader, method, config: OrtStaticInt8Config, tmp: Path) -> Path:
    """Collect activation ranges with ORT's calibrator and save them as a calibration cache.

    ``quantize_static`` builds its calibrator with fixed histogram options (128 bins for
    entropy, which degenerates to MinMax); creating it here lets the config choose them.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {"symmetric": True}  # matches ActivationSymmetric in the quantizer
    if config.method in ("entropy", "percentile"):
        options["num_bins"] = config.num_bins
    if config.method == "entropy":
        options["num_quantized_bins"] = ENTROPY_QUANTIZED_BINS
    if config.method == "percentile":
        options["percentile"] = config.percentile
    calibrator = create_calibrator(src, ["MatMul"], augmented_model_path=str(tmp / "aug.onnx"),
                                   calibrate_method=method, extra_options=options)
    calibrator.collect_data(reader)
    cache = tmp / "ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def weight_matmul_names(path: Path) -> list[str]:
    """Names of the MatMul nodes with a constant weight operand (an initializer).

    Every projection is such a MatMul: the export turns Conv1D and Gemm (OPT's MLP runs on
    flattened 2-D activations) into MatMul."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return [node.name for node in graph.node
            if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits]


def weight_matmuls(path: Path, arch: Arch) -> dict[str, int]:
    """MatMul nodes with a constant weight operand, per block (``lm_head`` and ``other`` too)."""
    counts: dict[str, int] = {}
    for name in weight_matmul_names(path):
        where = where_in_graph(name, arch)
        counts[where] = counts.get(where, 0) + 1
    return counts


def activation_matmuls_int8(path: Path) -> int:
    """MatMuls (QDQ) whose second operand is a DequantizeLinear of an activation, not of an
    int8 initializer: attention's Q K^T or softmax V computed on int8 inputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    dq_activations = {n.output[0] for n in graph.node
                      if n.op_type == "DequantizeLinear" and n.input[0] not in inits}
    return sum(1 for n in graph.node
               if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in dq_activations)


def quantized_matmuls(path: Path, arch: Arch) -> dict[str, int]:
    """Integer MatMul nodes, and (QDQ graphs) MatMuls whose weight comes from a
    DequantizeLinear of an int8 initializer."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    dq_weights = {n.output[0] for n in graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    counts: dict[str, int] = {}
    for node in graph.node:
        qdq = node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in dq_weights
        if node.op_type in QUANTIZED_MATMULS or qdq:
            where = where_in_graph(node.name, arch)
            counts[where] = counts.get(where, 0) + 1
    return counts


def where_in_graph(node_name: str, arch: Arch) -> str:
    """Block index, ``lm_head`` or ``other``, from the exporter's module-path node names."""
    m = arch.onnx_block_pattern.search(node_name)
    if m:
        return m.group(1)
    return "lm_head" if LM_HEAD.search(node_name) else "other"


def ort_dynamic_int8(src: Path, dst: Path, config: OrtDynamicInt8Config,
                     model_config) -> OnnxInt8Audit:
    """Quantize ``src`` into ``dst``; returns the audit (float vs int8 weight MatMuls) against
    the architecture of ``model_config`` (the HF config)."""
    ops = ["MatMul"] + (["Gather"] if config.quantize_embeddings else [])
    with quiet_root_logger():
        _quantize(src, dst, ops, config)
    return audit_onnx_quantization(src, dst, model_config)


@contextlib.contextmanager
def quiet_root_logger():
    """ORT's quantizers give advice through the root logger; keep it for -v."""
    root = logging.getLogger()
    level = root.level
    if not log.isEnabledFor(logging.INFO):
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize(src: Path, dst: Path, ops: list[str], config: OrtDynamicInt8Config) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     per_channel=config.per_channel, reduce_range=config.reduce_range,
                     op_types_to_quantize=ops,
                     extra_options={"MatMulConstBOnly": True,  # weights only, not QK/AV
                                    # ORT contrib ops (after ort_optimize) defeat ONNX shape
                                    # inference; their outputs are float
                                    "DefaultTensorType": onnx.TensorProto.FLOAT})


def audit_onnx_quantization(parent: Path, child: Path, model_config) -> OnnxInt8Audit:
    """Compare weight MatMuls of the parent graph with quantized MatMuls of the child, and
    with the projections the architecture has (``expected_block_matmuls``): a projection
    exported as another op would otherwise drop out of both counts unnoticed (OPT's MLP did,
    as Gemm)."""
    arch = arch_of(model_config)
    before, after = weight_matmuls(parent, arch), quantized_matmuls(child, arch)
    left = weight_matmuls(child, arch)
    blocks = sorted((k for k in before if k.isdigit()), key=int)
    return OnnxInt8Audit(
        blocks=len(blocks),
        layers=n_layers(model_config),
        expected_per_block=len(arch.linears()),
        block_matmuls=sum(before[k] for k in blocks),
        block_matmuls_int8=sum(after.get(k, 0) for k in blocks),
        per_block_int8={k: after.get(k, 0) for k in blocks},
        lm_head="int8" if after.get("lm_head") else ("float" if before.get("lm_head")
                                                     else "absent"),
        float_weight_matmuls_left=sum(left.values()),
        activation_matmuls_int8=activation_matmuls_int8(child))


def require_onnx_coverage(audit: OnnxInt8Audit) -> None:
    """Raise unless every block weight MatMul of the graph was quantized, in every layer, and
    each block's are at least the architecture's projections."""
    per_block = audit.expected_per_block
    short = {b: n for b, n in audit.per_block_int8.items() if n < per_block}
    if (short or audit.blocks < audit.layers
            or audit.block_matmuls_int8 < audit.block_matmuls):
        raise CompressionError(
            f"ORT int8 quantized {audit.block_matmuls_int8} of {audit.block_matmuls} "
            f"block weight MatMuls in {audit.blocks} of {audit.layers} blocks; each "
            f"block has {per_block} projections: {audit.per_block_int8}")
    if audit.activation_matmuls_int8:
        raise CompressionError(
            f"ORT int8 quantized {audit.activation_matmuls_int8} MatMuls of two activations "
            "(attention's Q K^T / softmax V); only weight MatMuls may be int8")


# version 2: the audit holds each block to its family's projections (arch.py)
@register_step("ort_dynamic_int8", OrtDynamicInt8Config, accepts=("onnx",), version=2,
               help="ONNX Runtime dynamic INT8 of every weight MatMul (+ embeddings) of an "
                    "ONNX artifact")
def _apply_ort_dynamic_int8(parent: LoadedModel, config: OrtDynamicInt8Config,
                            out: Path) -> StepReport:
    weights = "int8" + (" (embeddings too)" if config.quantize_embeddings else "")
    arch_of(parent.model.config, "ort_dynamic_int8")  # an unknown family fails before work

    def quantize(src: Path, dst: Path) -> OnnxInt8Audit:
        return ort_dynamic_int8(src, dst, config, parent.model.config)

    return _quantized_child(parent, out, quantize, weights, "dynamic uint8")


# version 3: weight MatMuls only (version 2 also quantized attention's Q K^T and softmax V)
@register_step("ort_static_int8", OrtStaticInt8Config, accepts=("onnx",), version=3,
               help="ONNX Runtime static INT8 (QDQ) of weight MatMuls, calibrated on the "
                    "train corpus")
def _apply_ort_static_int8(parent: LoadedModel, config: OrtStaticInt8Config,
                           out: Path) -> StepReport:
    arch_of(parent.model.config, "ort_static_int8")  # an unknown family fails before work

    def quantize(src: Path, dst: Path) -> OnnxInt8Audit:
        return ort_static_int8(src, dst, config, parent.model, parent.tokenizer)

    return _quantized_child(parent, out, quantize, "int8 (QDQ)", "static int8 (calibrated)")


def _quantized_child(parent: LoadedModel, out: Path, quantize, weights: str,
                     activations: str) -> StepReport:
    """Quantize the parent's graph into ``out`` with ``quantize(src, dst) -> audit``, refuse
    partial coverage, and return the child's report."""
    src = parent.model.path
    copy_side_files(src.parent, out)
    dst = out / ONNX_FILE
    audit = quantize(src, dst)
    require_onnx_coverage(audit)
    return onnx_child_fields(parent, dst, weights, activations, quantization=audit)

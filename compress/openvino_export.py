"""``export_openvino``: an ONNX artifact as a stateful OpenVINO IR, its weights compressed by
NNCF (int8, or int4 in groups) where asked.

Converted from slimbench's own ONNX export rather than through optimum-intel, which pins
older transformers than this project uses: ``openvino.convert_model`` reads the graph, the
past/present pairs become variables (OpenVINO's MakeStateful transformation) whose first
value is an empty cache of the call's batch, and ``nncf.compress_weights`` compresses the
MatMul and embedding weights. The audit counts, from the IR itself, which weight MatMuls
read a compressed constant; the parity compares the IR's logits with the ONNX parent's.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from pathlib import Path

import numpy as np

from slimbench.compress.arch import arch_of, n_layers
from slimbench.compress.loader import LoadedModel
from slimbench.compress.manifest import StepReport
from slimbench.compress.onnx_model import kv_names
from slimbench.compress.openvino_model import (
    BEAM_IDX,
    OV_BIN,
    OV_XML,
    OvModel,
    import_openvino,
    ov_logits_fn,
)
from slimbench.compress.parity import parity, reference_prompts
from slimbench.compress.step_io import copy_side_files
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.extras import import_extra
from slimbench.schema.codec import Typed

log = logging.getLogger(__name__)
# weights -> NNCF CompressWeightsMode name (None: left float32)
WEIGHT_MODES = {"float32": None, "int8_asym": "INT8_ASYM", "int8_sym": "INT8_SYM",
                "int4_sym": "INT4_SYM", "int4_asym": "INT4_ASYM"}
LOW_PRECISION = {"u8", "i8", "u4", "i4", "nf4"}
# ops between a compressed constant and the MatMul / Gather that reads it (decompression)
_DECOMPRESSION = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"}


@dataclasses.dataclass(frozen=True)
class ExportOpenvinoConfig:
    """Args:
        weights: float32, int8_asym / int8_sym (per output channel), int4_sym / int4_asym
            (groups of ``group_size`` input channels; NNCF keeps the embedding and output
            projection int8, its default).
        group_size: int4 group size (-1: per output channel).
        ratio: int4 only: the share of weight MatMuls made int4, the rest int8 (NNCF's).
    """

    weights: str = "float32"
    group_size: int = 128
    ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_MODES:
            raise UsageError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got "
                             f"{self.weights!r}")
        if self.group_size != -1 and self.group_size < 1:
            raise UsageError(f"group_size must be -1 or positive, got {self.group_size}")
        if not 0 < self.ratio <= 1:
            raise UsageError(f"ratio must be in (0, 1], got {self.ratio}")


@dataclasses.dataclass(frozen=True)
class OvWeightAudit(Typed):
    """What the IR holds, counted from its ops.

    Attributes:
        weight_matmuls: MatMuls with a constant weight.
        compressed_matmuls: those whose weight is a low-precision constant.
        compressed_gathers: embedding Gathers reading a low-precision constant.
        constants_by_type: weight constants (more than 1024 elements) per element type.
        stateful_variables: KV variables the cache lives in (two per layer).
    """

    weight_matmuls: int
    compressed_matmuls: int
    compressed_gathers: int
    constants_by_type: dict[str, int]
    stateful_variables: int


def _weight_type(node, depth: int = 6) -> str | None:
    """The element type of the constant behind ``node`` through decompression ops, or None
    where it reads an activation."""
    for _ in range(depth):
        kind = node.get_type_name()
        if kind == "Constant":
            return node.get_output_element_type(0).get_type_name()
        if kind not in _DECOMPRESSION:
            return None
        # a Subtract / Multiply of decompression: follow the weight, not its zero point / scale
        node = node.input_value(0).get_node()
    return None


def audit_ir(model) -> OvWeightAudit:
    matmuls = compressed = gathers = 0
    constants: collections.Counter = collections.Counter()
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "Constant" and int(np.prod(op.get_output_shape(0) or [1])) > 1024:
            constants[op.get_output_element_type(0).get_type_name()] += 1
        elif kind == "MatMul":
            weight = _weight_type(op.input_value(1).get_node())
            if weight is not None:
                matmuls += 1
                compressed += weight in LOW_PRECISION
        elif kind == "Gather":
            gathers += _weight_type(op.input_value(0).get_node()) in LOW_PRECISION
    variables = sum(op.get_type_name() == "ReadValue" for op in model.get_ops())
    return OvWeightAudit(weight_matmuls=matmuls, compressed_matmuls=compressed,
                         compressed_gathers=gathers, constants_by_type=dict(constants),
                         stateful_variables=variables)


def make_stateful(model, layers: int) -> None:
    """Turn the past inputs and present outputs into variables (in place); each variable's
    first value is an empty cache (batch of the call's ``input_ids``, 0 positions). Without
    that initial value OpenVINO would start from a batch-0 tensor and fail at the Concat.

    Each past is first gathered by a ``beam_idx`` input (which row of the cache each row
    continues), as OpenVINO's own exports do: OpenVINO GenAI requires the input, and the CPU
    plugin's stateful-attention fusion expects the Gather. slimbench feeds 0..batch-1."""
    from openvino import Type
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    past, present = kv_names(layers)
    batch_dim = model.input("input_ids").get_partial_shape()[0]
    beam_idx = ops.parameter([batch_dim], Type.i32, name=BEAM_IDX)
    beam_idx.output(0).get_tensor().add_names({BEAM_IDX})
    model.add_parameters([beam_idx])
    for name in past:
        port = model.input(name)
        consumers = port.get_target_inputs()
        gathered = ops.gather(port, beam_idx, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, dict(zip(past, present, strict=True)))
    batch = ops.gather(ops.shape_of(model.input("input_ids"), output_type="i64"),
                       ops.constant([0]), ops.constant(0))
    for op in model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        shape = op.get_output_partial_shape(0)  # (batch, kv heads, positions, head size)
        dims = [batch] + [ops.constant(np.array([0 if i == 2 else shape[i].get_length()],
                                                np.int64)) for i in (1, 2, 3)]
        zero = ops.constant(0.0, dtype=op.get_output_element_type(0))
        op.set_arguments([ops.broadcast(zero, ops.concat(dims, 0))])
    model.validate_nodes_and_infer_types()


def compress(model, config: ExportOpenvinoConfig):
    """NNCF's weight compression of ``model`` as ``config`` asks (the model, compressed)."""
    mode = WEIGHT_MODES[config.weights]
    if mode is None:
        return model
    nncf = import_extra("nncf", "openvino", "NNCF")
    # NNCF prints a table and a progress bar per call: quiet unless -v
    nncf.set_log_level(logging.INFO if log.isEnabledFor(logging.INFO) else logging.ERROR)
    kwargs = {}
    if mode.startswith("INT4"):
        kwargs = {"group_size": config.group_size, "ratio": config.ratio}
    try:
        return nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode),
                                     **kwargs)
    except nncf.InvalidGroupSizeError as e:
        sizes = sorted(set(re.findall(r"channel size: (\d+)", str(e))))
        raise UsageError(f"group_size {config.group_size} does not divide the input channels "
                         f"of some weight MatMuls ({', '.join(sizes)}); choose a divisor, or "
                         "-1 for one group per output channel") from None


def require_coverage(audit: OvWeightAudit, config: ExportOpenvinoConfig) -> None:
    """Raise unless every weight MatMul was compressed when compression was asked."""
    if config.weights == "float32":
        if audit.compressed_matmuls:
            raise CompressionError(f"a float32 export holds {audit.compressed_matmuls} "
                                   "compressed MatMuls")
        return
    if audit.compressed_matmuls < audit.weight_matmuls or not audit.weight_matmuls:
        raise CompressionError(f"NNCF compressed {audit.compressed_matmuls} of "
                               f"{audit.weight_matmuls} weight MatMuls to {config.weights}")


@register_step("export_openvino", ExportOpenvinoConfig, accepts=("onnx",), produces="openvino",
               libraries=("openvino", "nncf"),
               help="OpenVINO stateful IR of an ONNX artifact; NNCF int8 / int4 weights")
def _apply_export_openvino(parent: LoadedModel, config: ExportOpenvinoConfig,
                           out: Path) -> StepReport:
    from slimbench.compress.onnx_model import onnx_logits_fn

    onnx = parent.model
    arch_of(onnx.config, "export_openvino")
    if onnx.fused_attention or not onnx.has_mask:
        raise UsageError("export_openvino takes an ONNX export with attention: ops (the "
                         "default) of export_onnx version 2; this one has "
                         + ("fused attention (ONNX Runtime contrib ops)" if onnx.fused_attention
                            else "no attention-mask input"))
    ov = import_openvino()
    model = ov.Core().read_model(str(onnx.path))
    make_stateful(model, n_layers(onnx.config))
    model = compress(model, config)
    audit = audit_ir(model)
    require_coverage(audit, config)
    copy_side_files(onnx.path.parent, out)
    # compress_to_fp16 is on by default: it would store float32 weights as float16
    ov.save_model(model, str(out / OV_XML), compress_to_fp16=False)
    child = OvModel(out / OV_XML, onnx.config)
    prompts = reference_prompts(parent.tokenizer, onnx.config.vocab_size)
    size = (out / OV_BIN).stat().st_size + (out / OV_XML).stat().st_size
    return StepReport(
        format="openvino", parameters=parent.info.parameters,
        nonzero_parameters=parent.info.nonzero_parameters,
        dtypes={"weights": config.weights, "activations": "float32", "kv_cache": "float32"},
        quantization=audit, bytes_vs_parent=size / onnx.path.stat().st_size,
        parity=parity(onnx_logits_fn(onnx), ov_logits_fn(child), prompts))

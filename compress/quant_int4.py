"""Weight-only INT4 of an exported graph with ONNX Runtime's MatMulNBits (RTN, HQQ or GPTQ),
with the same node-level coverage audit as the INT8 steps.

Every weight MatMul becomes a ``com.microsoft.MatMulNBits``: 4-bit weights in blocks of
``block_size`` input channels, one scale (and zero point unless symmetric) per block and
output channel; activations stay float. The token/position embeddings (``Gather``) become
``GatherBlockQuantized`` with plain round-to-nearest: the export keeps the embedding and the
output projection as two float copies even when tied, each ~40% of a small model's bytes, so
int4 blocks alone would leave the file larger than the int8 one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from pathlib import Path
from typing import Any

from slimbench.compress.arch import arch_of, max_positions, n_layers
from slimbench.compress.calibration import calibration_batches
from slimbench.compress.loader import LoadedModel
from slimbench.compress.manifest import StepReport
from slimbench.compress.onnx_export import EXTERNAL_DATA_BYTES, ONNX_FILE
from slimbench.compress.quant_ort import (
    LM_HEAD,
    quiet_root_logger,
    weight_matmuls,
    where_in_graph,
)
from slimbench.compress.step_io import copy_side_files, onnx_child_fields
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.schema.codec import Typed

ALGORITHMS = ("rtn", "hqq", "gptq")
# measured: paired decode A/B, gpt2-124M shape, 2 threads, AMD EPYC Zen 4 (AVX-512 VNNI)
HQQ_CPU_NOTE = ("HQQ stores float zero points, for which ONNX Runtime's CPU MatMulNBits takes a "
                "slow path (decode 24x slower than RTN of the same block size on a gpt2-size "
                "model); use rtn or gptq where CPU speed matters")
BLOCK_SIZES = (16, 32, 64, 128, 256)
# MatMulNBits' accuracy_level: the compute type of the A x dequant(B) product
ACCURACY_LEVELS = {0: "unset", 1: "fp32", 2: "fp16", 3: "bf16", 4: "int8"}


@dataclasses.dataclass(frozen=True)
class OrtWeightInt4Config:
    """Args:
        algorithm: ``rtn`` (round to nearest, per-block min/max), ``hqq`` (half-quadratic
            optimisation of each block's zero point; no data) or ``gptq`` (error-compensating
            rounding from calibration activations).
        block_size: input channels sharing one scale: 16, 32, 64, 128 or 256.
        symmetric: no zero point (int4 in [-8, 7]); HQQ always has a float zero point per
            block and GPTQ's symmetric solution does not survive ORT's packing, so both refuse
            it.
        accuracy_level: MatMulNBits compute type: 0 unset (ORT's default), 1 fp32, 2 fp16,
            3 bf16, 4 int8 (activations quantized per block at run time).
        include_lm_head: also quantize the output projection; it is a float copy of the
            (tied) embedding, the largest single weight of a small model.
        quantize_embeddings: store the token/position embeddings as int4 too (RTN).
        calib_samples: GPTQ calibration sequences from the corpus *train* split.
        calib_seq_len: tokens per GPTQ calibration sequence.
    """

    algorithm: str = "rtn"
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 0
    include_lm_head: bool = True
    quantize_embeddings: bool = True
    calib_samples: int = 32
    calib_seq_len: int = 128

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise UsageError(f"algorithm must be one of {', '.join(ALGORITHMS)}, "
                             f"got {self.algorithm!r}")
        if self.block_size not in BLOCK_SIZES:
            raise UsageError(f"block_size must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                             f"got {self.block_size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            levels = ", ".join(f"{k} ({v})" for k, v in ACCURACY_LEVELS.items())
            raise UsageError(f"accuracy_level must be one of {levels}, got {self.accuracy_level}")
        if self.symmetric and self.algorithm == "hqq":
            raise UsageError("hqq is asymmetric by design (it optimises a float zero point "
                             "per block); use symmetric=false, or algorithm rtn or gptq")
        if self.symmetric and self.algorithm == "gptq":
            # ORT re-derives each block's scale from GPTQ's solved weights (max |w| / 7.5),
            # which moves a symmetric solution off its grid (reference: ppl +5% vs RTN's +0.3%)
            raise UsageError("gptq with symmetric=true loses accuracy in ORT's packing (it "
                             "re-derives the scales); use symmetric=false, or algorithm rtn")
        if self.calib_samples < 1 or self.calib_seq_len < 2:
            raise UsageError(f"calib_samples must be >= 1 and calib_seq_len >= 2, got "
                             f"{self.calib_samples}, {self.calib_seq_len}")


@dataclasses.dataclass(frozen=True)
class GptqCalibration(Typed):
    """The data GPTQ's Hessians came from.

    Attributes:
        samples: calibration sequences used.
        seq_len: tokens per sequence (capped at the model's positions).
        source: where the sequences came from.
    """

    samples: int
    seq_len: int
    source: str


@dataclasses.dataclass(frozen=True)
class Int4Audit(Typed):
    """MatMulNBits of the child against the parent's weight MatMuls and the architecture (the
    manifest's ``quantization`` of ``ort_weight_int4``).

    Attributes:
        bits: the bit widths the MatMulNBits nodes carry.
        block_size: their block sizes.
        accuracy_level: their accuracy levels (0: unset).
        symmetric: no node has a zero-point input.
        blocks: blocks with weight MatMuls in the parent graph.
        layers: the model's layers (every one must be a block above).
        expected_per_block: projections per block by the family's description.
        block_matmuls: the parent's block weight MatMuls.
        block_matmuls_int4: the child's MatMulNBits inside blocks.
        per_block_int4: MatMulNBits per block index.
        lm_head: the output projection in the child: int4, float or absent.
        float_weight_matmuls_left: float weight MatMuls left anywhere in the child.
        embeddings_int4: GatherBlockQuantized nodes (int4 embedding tables).
        bytes: the child graph's bytes, external data included.
        bytes_vs_parent_all_files: those over the parent's (the step's ``bytes_vs_parent``
            reads the .onnx files only).
        algorithm: rtn, hqq or gptq.
        include_lm_head: whether the output projection was asked to be int4.
        calibration: (gptq) the calibration data.
        note: a warning the user must see (HQQ's slow CPU path).
    """

    bits: list[int]
    block_size: list[int]
    accuracy_level: list[int]
    symmetric: bool
    blocks: int
    layers: int
    expected_per_block: int
    block_matmuls: int
    block_matmuls_int4: int
    per_block_int4: dict[str, int]
    lm_head: str
    float_weight_matmuls_left: int
    embeddings_int4: int
    bytes: int
    bytes_vs_parent_all_files: float
    algorithm: str | None = None
    include_lm_head: bool | None = None
    calibration: GptqCalibration | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``quantization``: unset fields left out."""
        return {k: v for k, v in super().to_dict().items() if v is not None}


def ort_weight_int4(src: Path, dst: Path, config: OrtWeightInt4Config, onnx_model,
                    tokenizer) -> Int4Audit:
    """Quantize ``src`` into ``dst``; returns the audit (see ``audit_int4``)."""
    import numpy as np
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    inits = {i.name: i for i in graph.initializer}
    lm_head = [n.name for n in graph.node if n.op_type == "MatMul" and LM_HEAD.search(n.name)]
    exclude = [] if config.include_lm_head else lm_head
    reader = calibration = None
    # ORT prints GPTQ's progress bar on stdout (the CLI's) and advises on the root logger;
    # numpy and torch warn about all-zero blocks (pad rows: scale 0, stored as 0) and
    # read-only arrays, neither of which changes the result
    with (quiet_root_logger(), contextlib.redirect_stdout(io.StringIO()),
          warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore")):
        warnings.simplefilter("ignore")
        if config.algorithm == "gptq":
            reader, calibration = _gptq_reader(config, onnx_model, tokenizer)
        proto = _quantize_matmuls(str(src), config, exclude, reader)
        if config.quantize_embeddings:
            # only float tables (rank 2): the graph's other constant Gathers index shapes
            floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
            tables = {n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
                      and inits[n.input[0]].data_type in floats
                      and len(inits[n.input[0]].dims) == 2}
            others = [n.name for n in graph.node if n.op_type == "Gather" and n.name not in tables]
            proto = _quantize_gathers(proto, config, others)
    if config.accuracy_level:  # set here for every algorithm: ORT's HQQ has no such option
        for node in proto.graph.node:
            if node.op_type == "MatMulNBits":
                kept = [a for a in node.attribute if a.name != "accuracy_level"]
                del node.attribute[:]
                node.attribute.extend([*kept, onnx.helper.make_attribute(
                    "accuracy_level", config.accuracy_level)])
    big = sum(len(i.raw_data) for i in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(dst), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=ONNX_FILE + ".data")
    return dataclasses.replace(audit_int4(src, dst, onnx_model.config),
                               algorithm=config.algorithm,
                               include_lm_head=config.include_lm_head, calibration=calibration)


def _nbits():
    """ORT's MatMulNBits module, imported without its import-time ``basicConfig(INFO)``, which
    would otherwise configure the root logger of a process that has not."""
    root, guard = logging.getLogger(), logging.NullHandler()
    root.addHandler(guard)  # basicConfig does nothing when the root has a handler
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        root.removeHandler(guard)
    return matmul_nbits_quantizer


def _quantize_matmuls(src: str, config: OrtWeightInt4Config, exclude: list[str], reader):
    """Every weight MatMul but ``exclude`` as MatMulNBits; returns the ModelProto."""
    nbits = _nbits()

    class Quantizer(nbits.MatMulNBitsQuantizer):
        def _generate_q4_node_config(self):
            # ORT 1.31 applies nodes_to_exclude to RTN/GPTQ through this "fp32" marker only
            # on its RTN path: without it GPTQ would quantize an excluded lm_head
            return super()._generate_q4_node_config() | dict.fromkeys(self.nodes_to_exclude,
                                                                      "fp32")

    if config.algorithm == "rtn":  # ORT's "DEFAULT" config: its C++ min/max block kernel
        algo = nbits.DefaultWeightOnlyQuantConfig(block_size=config.block_size,
                                                  is_symmetric=config.symmetric)
    elif config.algorithm == "hqq":
        algo = nbits.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=4)
    else:  # the group is the quantizer's block_size (the config's is a solver batch, unused)
        algo = nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=reader)
    quant = Quantizer(src, bits=4, block_size=config.block_size,
                      is_symmetric=config.symmetric, nodes_to_exclude=exclude, algo_config=algo)
    with _gptq_solver() if config.algorithm == "gptq" else contextlib.nullcontext():
        quant.process()
    return quant.model.model


@contextlib.contextmanager
def _gptq_solver():
    """ORT's GPTQ (calibration, Hessians, packing) with ``gptq_solve`` as its solver."""
    from onnxruntime.quantization.neural_compressor import weight_only

    original, weight_only.gptq = weight_only.gptq, gptq_solve
    try:
        yield
    finally:
        weight_only.gptq = original


def gptq_solve(W, H, num_bits=4, group_size=32, scheme="asym", percdamp=0.01, **_):
    """GPTQ (Frantar et al. 2022): quantize W (in, out) one input row at a time and spread
    each row's rounding error over the rows not yet quantized, weighted by the inverse of
    the calibration Hessian H = 2 X^T X / n; returns the dequantized weights (ORT packs them).

    Stands in for ORT 1.31's ``weight_only.gptq`` during ``_quantize_matmuls``: that one
    reads the update from a column of the upper Cholesky factor below its diagonal, which is
    zero, so it corrects nothing and returns round-to-nearest codes.
    """
    import numpy as np

    maxq, sym = 2 ** num_bits - 1, scheme == "sym"
    dtype, W, H = W.dtype, W.astype(np.float64), H.astype(np.float64)
    dead = np.diag(H) == 0  # an input never active: its weights do not matter
    H[dead, dead] = 1
    W[dead] = 0
    H[np.diag_indices_from(H)] += percdamp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # H^-1 = U^T U; row i carries row i's error
    Q = np.zeros_like(W)
    # "lazy batch" updates (the GPTQ paper's section 3.2): within a block of rows the error
    # goes to the block's later rows one row at a time; the rows after the block get the
    # block's errors in one matrix product. Same result as row-by-row updates (a block is a
    # whole number of groups, so a group's grid still sees every earlier row's correction),
    # but BLAS instead of n outer products over all later rows: minutes -> seconds on gpt2.
    block = group_size * max(1, 128 // group_size)
    for b0 in range(0, len(W), block):
        b1 = min(b0 + block, len(W))
        err = np.zeros((b1 - b0, W.shape[1]))
        for i in range(b0, b1):
            if i % group_size == 0:  # the group's grid from its (already corrected) weights
                g = W[i:i + group_size]
                lo, hi = np.minimum(g.min(0), 0), np.maximum(g.max(0), 0)
                if sym:
                    hi = np.maximum(-lo, hi)
                    lo = -hi
                flat = hi == lo
                lo[flat], hi[flat] = -1, 1
                scale = (hi - lo) / maxq
                zero = np.full_like(scale, (maxq + 1) / 2) if sym else np.round(-lo / scale)
            Q[i] = scale * (np.clip(np.round(W[i] / scale) + zero, 0, maxq) - zero)
            err[i - b0] = (W[i] - Q[i]) / U[i, i]
            W[i + 1:b1] -= np.outer(U[i, i + 1:b1], err[i - b0])
        W[b1:] -= U[b0:b1, b1:].T @ err
    return Q.astype(dtype)


def _quantize_gathers(proto, config: OrtWeightInt4Config, exclude: list[str]):
    """Embedding tables as GatherBlockQuantized, blocked along the hidden axis. ORT declares
    opset 21 for this (int4 tensors); the graph's opset-18 ops mean the same there."""
    nbits = _nbits()

    algo = nbits.DefaultWeightOnlyQuantConfig(
        block_size=config.block_size, is_symmetric=config.symmetric,
        op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
    quant = nbits.MatMulNBitsQuantizer(proto, nodes_to_exclude=exclude, algo_config=algo)
    quant.process()
    return quant.model.model


def _gptq_reader(config: OrtWeightInt4Config, onnx_model, tokenizer):
    """A calibration reader over train-split sequences, and the manifest's record of them."""
    from onnxruntime.quantization import CalibrationDataReader

    cfg = onnx_model.config
    seq_len = min(config.calib_seq_len, max_positions(cfg))  # a learned table ends there
    batches = calibration_batches(tokenizer, cfg.vocab_size, config.calib_samples, seq_len)
    feeds = [onnx_model.feeds(ids) for ids in batches]  # the inputs the graph declares

    class Reader(CalibrationDataReader):  # ORT deep-copies it before iterating: keep a list
        def __init__(self) -> None:
            self.at = 0

        def get_next(self):
            self.at += 1
            return feeds[self.at - 1] if self.at <= len(feeds) else None

    return Reader(), GptqCalibration(
        samples=len(batches), seq_len=seq_len,
        source="corpus train split" if tokenizer is not None else "seeded random ids")


def audit_int4(parent: Path, child: Path, model_config) -> Int4Audit:
    """MatMulNBits per block against the parent's weight MatMuls and the architecture's
    projections, the lm_head and embeddings, and the attributes the nodes really carry."""
    import onnx

    arch = arch_of(model_config)
    before = weight_matmuls(parent, arch)
    nodes = onnx.load(str(child), load_external_data=False).graph.node
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    after: dict[str, int] = {}
    for node in nbits:
        after[where_in_graph(node.name, arch)] = after.get(where_in_graph(node.name, arch), 0) + 1
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nbits]
    blocks = sorted((k for k in before if k.isdigit()), key=int)
    parent_bytes, child_bytes = _onnx_bytes(parent), _onnx_bytes(child)
    return Int4Audit(
        bits=sorted({int(a["bits"]) for a in attrs}),
        block_size=sorted({int(a["block_size"]) for a in attrs}),
        accuracy_level=sorted({int(a.get("accuracy_level", 0)) for a in attrs}),
        # a zero-point input (4th) on any node: asymmetric
        symmetric=not any(len(n.input) > 3 and n.input[3] for n in nbits),
        blocks=len(blocks), layers=n_layers(model_config),
        expected_per_block=len(arch.linears()),
        block_matmuls=sum(before[k] for k in blocks),
        block_matmuls_int4=sum(after.get(k, 0) for k in blocks),
        per_block_int4={k: after.get(k, 0) for k in blocks},
        lm_head="int4" if after.get("lm_head") else ("float" if before.get("lm_head")
                                                     else "absent"),
        float_weight_matmuls_left=sum(weight_matmuls(child, arch).values()),
        embeddings_int4=sum(n.op_type == "GatherBlockQuantized" for n in nodes),
        # with external data: step_io's bytes_vs_parent reads the .onnx files only
        bytes=child_bytes, bytes_vs_parent_all_files=child_bytes / parent_bytes)


def _onnx_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if f.is_file())


def require_int4_coverage(audit: Int4Audit, include_lm_head: bool) -> None:
    """Raise unless every layer's every projection is a MatMulNBits, and the lm_head is
    what ``include_lm_head`` asked for."""
    per_block = audit.expected_per_block
    short = {b: n for b, n in audit.per_block_int4.items() if n < per_block}
    if (short or audit.blocks < audit.layers
            or audit.block_matmuls_int4 < audit.block_matmuls):
        raise CompressionError(
            f"int4 quantized {audit.block_matmuls_int4} of {audit.block_matmuls} block "
            f"weight MatMuls in {audit.blocks} of {audit.layers} blocks; each block has "
            f"{per_block} projections: {audit.per_block_int4}")
    want = "int4" if include_lm_head else "float"
    if audit.lm_head not in (want, "absent"):
        raise CompressionError(f"int4: lm_head is {audit.lm_head}, include_lm_head="
                               f"{include_lm_head} asked for {want}")


@register_step("ort_weight_int4", OrtWeightInt4Config, accepts=("onnx",),
               help="ONNX Runtime weight-only INT4 (MatMulNBits: RTN, HQQ or GPTQ) of every "
                    "weight MatMul (+ embeddings) of an ONNX artifact")
def _apply_ort_weight_int4(parent: LoadedModel, config: OrtWeightInt4Config,
                           out: Path) -> StepReport:
    arch_of(parent.model.config, "ort_weight_int4")  # an unknown family fails before work
    src = parent.model.path
    copy_side_files(src.parent, out)
    dst = out / ONNX_FILE
    audit = ort_weight_int4(src, dst, config, parent.model, parent.tokenizer)
    require_int4_coverage(audit, config.include_lm_head)
    if config.algorithm == "hqq":
        # a compression that makes the model slower must say so where the user looks
        audit = dataclasses.replace(audit, note=HQQ_CPU_NOTE)
        logging.getLogger(__name__).warning("ort_weight_int4: %s", HQQ_CPU_NOTE)
    weights = f"int4 (MatMulNBits, block {config.block_size})" + (
        " (embeddings too)" if config.quantize_embeddings else "")
    dtypes = parent.manifest.report.get("dtypes") if parent.manifest else None
    activations = (dtypes or {}).get("activations")
    return onnx_child_fields(parent, dst, weights, activations or "float32",
                             quantization=audit)

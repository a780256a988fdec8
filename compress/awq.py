"""AWQ, activation-aware weight scaling (Lin et al., 2023), for ONNX Runtime's int4
(``ort_weight_int4``: RTN or GPTQ after it).

Input channels that carry large activations matter most to a linear's output; scaling their
weights up (W[:, j] * s_j) before blockwise int4 rounding shrinks their relative rounding
error, and dividing the producer's output by s_j (a norm or linear, ``smoothing.py``) keeps
the function. Per group, s = mean|X_j|^a normalised by sqrt(max s * min s), with a from a grid
on [0, 1) chosen to minimise || Q(W s) (X / s) - W X ||^2 on calibration tokens, Q the int4
fake-quant ``ort_weight_int4`` applies (``int4_fake_quant``: ORT's MatMulNBits RTN, blocks of
``block_size`` input channels). a = 0 is s = 1, so the chosen scales never do worse than plain
RTN on the calibration tokens. The fold is exact: the fp32 child equals its parent (proven),
and the rounding happens in the quantizer that follows::

    steps: [{awq: {block_size: 128}}, export_onnx,
            {ort_weight_int4: {algorithm: rtn, block_size: 128}}]

AutoAWQ's weight clipping (a second search that changes weights) is left out: it is not
exact, and GPTQ after AWQ rounds with error feedback anyway.

Why not ``awq`` as an algorithm of ``ort_weight_int4``: in the exported graph the norms to fold
into are ``LayerNormalization`` nodes (fused further by ``ort_optimize``); the torch model has
every family's layout (``arch.py``). Why not NNCF's ``compress_weights(awq=True)`` (installed,
ONNX backend): it folds only into a preceding MatMul (SwiGLU's up -> down) and otherwise
*inserts* a Mul node, so the norm -> q/k/v and norm -> MLP groups, AWQ's main ones, would add
ops to the graph; and it rounds the weights itself, which rules out AWQ followed by our GPTQ.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from slimbench.compress.calibration import parent_calibration
from slimbench.compress.loader import LoadedModel
from slimbench.compress.manifest import StepReport
from slimbench.compress.quant_int4 import BLOCK_SIZES
from slimbench.compress.smoothing import (
    SmoothingCalibration,
    fold,
    input_stats,
    out_in,
    require_fp32,
    smoothable_groups,
    smoothed_child,
    untie_lm_head,
)
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.schema.codec import Typed


@dataclasses.dataclass(frozen=True)
class AwqConfig:
    """Args:
        block_size: the int4 block of the ``ort_weight_int4`` that follows: 16, 32, 64, 128
            or 256 input channels.
        symmetric: the quantizer that follows is symmetric (no zero point).
        grid: candidate exponents a = 0, 1/grid, ..., (grid - 1)/grid.
        lm_head: also scale the final norm -> ``lm_head`` (int4 by default in
            ``ort_weight_int4``); a tied head is untied first: the exported graph holds two
            copies anyway, the torch child grows by vocab x hidden.
        calib_samples: calibration sequences from the corpus *train* split.
        calib_seq_len: tokens per calibration sequence.
        search_tokens: activation rows per group kept for the search.
    """

    block_size: int = 128
    symmetric: bool = False
    grid: int = 20
    lm_head: bool = True
    calib_samples: int = 32
    calib_seq_len: int = 128
    search_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.block_size not in BLOCK_SIZES:
            raise UsageError(f"block_size must be one of {', '.join(map(str, BLOCK_SIZES))} "
                             f"(ORT MatMulNBits blocks), got {self.block_size}")
        if not 2 <= self.grid <= 200:
            raise UsageError(f"grid must be in [2, 200], got {self.grid}")
        if self.calib_samples < 1 or self.calib_seq_len < 2 or self.search_tokens < 16:
            raise UsageError("calib_samples must be >= 1, calib_seq_len >= 2 and "
                             "search_tokens >= 16")


@dataclasses.dataclass(frozen=True)
class AwqGroup(Typed):
    """One group's search.

    Attributes:
        alpha: the exponent folded (0: unscaled).
        error_rtn: || (Q(W) - W) X ||^2 / ||W X||^2 on the calibration rows, unscaled.
        error_awq: the same with the folded scales.
    """

    alpha: float
    error_rtn: float
    error_awq: float


@dataclasses.dataclass(frozen=True)
class AwqAudit(Typed):
    """What AWQ folded (the manifest's ``quantization`` of ``awq``).

    Attributes:
        method: ``awq``.
        block_size: the int4 block the search simulated.
        symmetric: whether it simulated symmetric int4.
        groups: scaled groups (alpha > 0).
        groups_searched: groups searched.
        linears: linears of the scaled groups.
        lm_head_untied: the lm_head was untied from the embedding to be scaled.
        skipped: producer/consumer pairs that cannot be scaled exactly, and why.
        error_rtn: summed over groups, the relative int4 output error unscaled.
        error_awq: the same with the folded scales.
        per_group: each group's alpha and errors.
        calibration: the data.
        note: where the int4 gain appears.
    """

    method: str
    block_size: int
    symmetric: bool
    groups: int
    groups_searched: int
    linears: int
    lm_head_untied: bool
    skipped: list[str]
    error_rtn: float
    error_awq: float
    per_group: dict[str, AwqGroup]
    calibration: SmoothingCalibration
    note: str


def int4_fake_quant(w: torch.Tensor, block_size: int, symmetric: bool) -> torch.Tensor:
    """What ORT's MatMulNBits RTN (MLAS ``QuantizeBlockwise``) stores, dequantized: blocks of
    ``block_size`` input channels per output row of ``w`` (out, in), zero-padded at the end.

    Asymmetric: the block's range widened to hold 0, scale = (max - min) / 15, zero point
    round(-min / scale); symmetric: scale = (the signed value of largest magnitude) / -8,
    zero point 8. Codes clamp(round(w / scale + zp), 0, 15).
    """
    rows, k = w.shape
    blocks = F.pad(w, (0, -k % block_size)).reshape(rows, -1, block_size)
    lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    if symmetric:
        scale = torch.where(hi.abs() > lo.abs(), hi, lo) / -8
        zp = torch.full_like(scale, 8.0)
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / 15
        zp = torch.where(scale != 0, (-lo / scale).round().clamp(0, 15), 0.0)
    inv = torch.where(scale != 0, 1 / scale, 0.0)
    q = (blocks * inv + zp).round().clamp(0, 15)
    return ((q - zp) * scale).reshape(rows, -1)[:, :k]


def int4_error(w: torch.Tensor, gram: torch.Tensor, s: torch.Tensor, block_size: int,
               symmetric: bool) -> float:
    """|| (Q(W s) / s - W) X^T ||^2 for W (out, in), s (in,), gram = X^T X (in, in): the
    output error of the scaled, quantized linear on the calibration rows X (tokens, in)."""
    d = (int4_fake_quant(w * s, block_size, symmetric) / s - w).double()  # (out, in)
    return float(((d @ gram) * d).sum())


@torch.no_grad()
def awq(model, config: AwqConfig, batches: list, source: str) -> AwqAudit:
    """Search and fold AWQ scales into ``model`` in place, group by group in forward order
    (each search sees the weights earlier folds left, as AutoAWQ); returns the audit.

    Raises:
        CompressionError: the model has no group to scale.
    """
    untied = untie_lm_head(model) if config.lm_head else False
    kinds = ("norm", "linear") + (("head",) if config.lm_head else ())
    groups, skipped = smoothable_groups(model, kinds, "awq")
    if not groups:
        raise CompressionError(f"awq: nothing to scale ({'; '.join(skipped)})")
    stats = input_stats(model, groups, batches, config.search_tokens)
    alphas = [i / config.grid for i in range(config.grid)]
    per_group, scaled, linears, total_rtn, total_awq = {}, 0, 0, 0.0, 0.0
    for g, st in zip(groups, stats, strict=True):
        w = torch.cat([out_in(c).detach().float() for c in g.consumers])  # (out, in)
        x = st.sample.double()
        gram = x.T @ x  # (in, in)
        norm = float(((w.double() @ gram) * w.double()).sum())  # ||W X^T||^2
        mean = st.absmean.clamp_min(1e-8)
        best = (float("inf"), 0.0, None)
        errors = {}
        for a in alphas:
            s = mean.pow(a).clamp_min(1e-4)
            s = s / (s.max() * s.min()).sqrt()  # centred on 1: neither side drifts
            errors[a] = int4_error(w, gram, s, config.block_size, config.symmetric)
            if errors[a] < best[0]:
                best = (errors[a], a, s)
        err, a, s = best
        if a > 0:
            fold(g, s)
            scaled, linears = scaled + 1, linears + len(g.consumers)
        total_rtn += errors[0.0] / norm
        total_awq += err / norm
        per_group[g.name] = AwqGroup(alpha=a, error_rtn=errors[0.0] / norm,
                                     error_awq=err / norm)
    return AwqAudit(
        method="awq", block_size=config.block_size, symmetric=config.symmetric,
        groups=scaled, groups_searched=len(groups), linears=linears,
        lm_head_untied=untied, skipped=skipped,
        error_rtn=total_rtn, error_awq=total_awq, per_group=per_group,
        calibration=SmoothingCalibration(
            samples=len(batches), seq_len=int(batches[0].shape[-1]),
            tokens_searched=int(stats[0].sample.shape[0]), source=source),
        note="exact fp32 transform: the int4 gain appears once ort_weight_int4 (same "
             "block_size) quantizes the exported graph")


@register_step("awq", AwqConfig,
               help="AWQ: search and fold activation-aware per-channel scales before "
                    "ort_weight_int4 (RTN or GPTQ); exact in fp32")
def _apply_awq(parent: LoadedModel, config: AwqConfig, out: Path) -> StepReport:
    require_fp32(parent.model, "awq")
    model = copy.deepcopy(parent.model)
    batches = parent_calibration(parent, config.calib_samples, config.calib_seq_len)
    source = "corpus train split" if parent.tokenizer is not None else "seeded random ids"
    audit = awq(model, config, batches, source)
    return smoothed_child(parent, model, out, audit,
                          f"float32 (AWQ scales for int4 block {config.block_size} folded)")

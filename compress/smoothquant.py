"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before ONNX
Runtime static int8.

Static int8 gives each activation tensor one scale, set by its largest channel; a few outlier
channels (LayerNorm outputs of trained models) leave the others a handful of int8 levels. Per
input channel j of a group's linears, s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha) divides
the activation and multiplies the weight, which spreads the range between the two; the scales
are folded exactly into the producing norm or linear (``smoothing.py``), so the smoothed fp32
model equals its parent (proven: parity <= ``FP32_PARITY``) and adds no op. Used as::

    steps: [{smoothquant: {alpha: null}}, export_onnx, {ort_static_int8: {method: minmax}}]

A torch step rather than an option of ``ort_static_int8``: in the exported graph the norms to
fold into are ``LayerNormalization`` nodes (fused further by ``ort_optimize``), while the torch
model has every family's layout in ``arch.py``.

``alpha: null`` searches the ``alphas`` grid on the calibration tokens: each candidate's scales
are folded out of place, the smoothed linears are run through a simulation of ORT's static
int8 (symmetric int8 in [-127, 127]: one activation scale per tensor from max|X| (MinMax), one
weight scale per tensor or per output channel) and the alpha with the lowest mean relative
output error wins.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from slimbench.compress.calibration import parent_calibration
from slimbench.compress.loader import LoadedModel
from slimbench.compress.manifest import StepReport
from slimbench.compress.smoothing import (
    MIN_SCALE,
    Group,
    InputStats,
    SmoothingCalibration,
    fold,
    folded_weight,
    input_stats,
    out_in,
    outlier_ratio,
    require_fp32,
    smoothable_groups,
    smoothed_child,
    untie_lm_head,
)
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.schema.codec import Typed

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
GROUP_SETS = {"norms": ("norm",), "all": ("norm", "linear")}
INT8 = 127  # ORT's symmetric int8 range for weights and (ActivationSymmetric) activations


@dataclasses.dataclass(frozen=True)
class SmoothQuantConfig:
    """Args:
        alpha: migration strength in [0, 1] (0: no smoothing; 0.5: the paper's default);
            null: searched over ``alphas`` by the simulated int8 error it leaves.
        alphas: the search grid (each in [0, 1]).
        groups: ``norms`` (norm -> q/k/v and norm -> MLP inputs, the paper's) or ``all``
            (also v -> output projection, up -> down and OPT's fc1 -> fc2 where exact).
        per_channel: simulate per-output-channel int8 weights in the search (match the
            ``ort_static_int8`` that follows).
        lm_head: also smooth the final norm -> ``lm_head`` (a tied head is untied first:
            the exported graph holds two copies anyway, the torch child grows by vocab x
            hidden). On by default: with 128-token calibration it was the group that paid most
            on the reference (static int8 minmax perplexity +0.10% with it, +0.24% without,
            +0.38% unsmoothed); with the default 512 (256 there) it makes no difference
            (docs/compression.md).
        calib_samples: calibration sequences from the corpus *train* split.
        calib_seq_len: tokens per calibration sequence, capped at the model's positions
            (as ``ort_static_int8``'s ``seq_len``: the maxima should cover every position).
        search_tokens: activation rows per group kept for the search.
    """

    alpha: float | None = None
    alphas: tuple[float, ...] = ALPHAS
    groups: str = "all"
    per_channel: bool = False
    lm_head: bool = True
    calib_samples: int = 32
    calib_seq_len: int = 512
    search_tokens: int = 2048

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise UsageError(f"alpha must be in [0, 1] (or null: searched), got {self.alpha}")
        if not self.alphas or not all(0 <= a <= 1 for a in self.alphas):
            raise UsageError(f"alphas must be a non-empty list of numbers in [0, 1], got "
                             f"{list(self.alphas)}")
        if self.groups not in GROUP_SETS:
            raise UsageError(f"groups must be one of {', '.join(GROUP_SETS)}, got "
                             f"{self.groups!r}")
        if self.calib_samples < 1 or self.calib_seq_len < 2 or self.search_tokens < 16:
            raise UsageError("calib_samples must be >= 1, calib_seq_len >= 2 and "
                             "search_tokens >= 16")


@dataclasses.dataclass(frozen=True)
class SmoothQuantAudit(Typed):
    """What SmoothQuant folded (the manifest's ``quantization`` of ``smoothquant``).

    Attributes:
        method: ``smoothquant``.
        alpha: the migration strength folded.
        searched: whether alpha was chosen by the search.
        int8_error_per_alpha: (search) mean relative output error of the simulated int8
            linears per candidate alpha.
        int8_error_unsmoothed: the same without smoothing.
        int8_error_chosen: the same with the folded scales.
        groups: smoothed groups.
        linears: smoothed linears (a group's consumers).
        group_names: ``<block>: <producer> -> <consumers>`` of each.
        lm_head_untied: the lm_head was untied from the embedding to be scaled.
        skipped: producer/consumer pairs that cannot be smoothed exactly, and why.
        outlier_ratio_before: mean over groups of max_j max|X_j| / median_j max|X_j|.
        outlier_ratio_after: the same of the smoothed inputs X / s.
        worst_outlier_ratio_before: the largest group ratio before.
        worst_outlier_ratio_after: the largest after.
        scale_min: the smallest folded scale.
        scale_max: the largest.
        per_channel: whether the search simulated per-channel weights.
        calibration: the data.
        note: where the int8 gain appears.
    """

    method: str
    alpha: float
    searched: bool
    int8_error_per_alpha: dict[str, float] | None
    int8_error_unsmoothed: float
    int8_error_chosen: float
    groups: int
    linears: int
    group_names: list[str]
    lm_head_untied: bool
    skipped: list[str]
    outlier_ratio_before: float
    outlier_ratio_after: float
    worst_outlier_ratio_before: float
    worst_outlier_ratio_after: float
    scale_min: float
    scale_max: float
    per_channel: bool
    calibration: SmoothingCalibration
    note: str


def smooth_scales(group: Group, stats: InputStats, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha) over the group's consumers (in,);
    1 for a channel that is dead on either side (nothing to balance)."""
    wmax = torch.cat([out_in(c).detach().float() for c in group.consumers]).abs().amax(0)
    xmax = stats.absmax
    s = (xmax.pow(alpha) / wmax.clamp_min(MIN_SCALE).pow(1 - alpha)).clamp_min(MIN_SCALE)
    return torch.where((xmax == 0) | (wmax == 0), torch.ones_like(s), s)


def _int8(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (t / scale).round().clamp(-INT8, INT8) * scale


@torch.no_grad()
def int8_error(groups: list[Group], stats: list[InputStats],
               plan: list[tuple[Group, torch.Tensor]], per_channel: bool) -> float:
    """Mean over the groups' linears of ||Q(X/s) Q(W')^T - (X/s) W'^T||^2 / ||(X/s) W'^T||^2,
    W' the weight after every fold of ``plan`` (empty: unsmoothed), Q ORT's static int8."""
    scales = {id(g): s for g, s in plan}
    errors = []
    for g, st in zip(groups, stats, strict=True):
        s = scales.get(id(g), torch.ones(g.channels))
        x = st.sample / s  # (tokens, in)
        xq = _int8(x, ((st.absmax / s).max() / INT8).clamp_min(1e-12))  # MinMax, per tensor
        for c in g.consumers:
            w = folded_weight(c, plan)  # (out, in)
            amax = w.abs().amax(1, keepdim=True) if per_channel else w.abs().max()
            ref = x @ w.T
            err = (xq @ _int8(w, (amax / INT8).clamp_min(1e-12)).T - ref).pow(2).sum()
            errors.append(float(err / ref.pow(2).sum().clamp_min(1e-30)))
    return sum(errors) / len(errors)


@torch.no_grad()
def smoothquant(model, config: SmoothQuantConfig, batches: list,
                source: str) -> SmoothQuantAudit:
    """Fold SmoothQuant scales into ``model`` in place; returns the audit.

    Raises:
        CompressionError: the model has no group to smooth.
    """
    untied = untie_lm_head(model) if config.lm_head else False
    kinds = GROUP_SETS[config.groups] + (("head",) if config.lm_head else ())
    groups, skipped = smoothable_groups(model, kinds, "smoothquant")
    if not groups:
        raise CompressionError(f"smoothquant: nothing to smooth ({'; '.join(skipped)})")
    stats = input_stats(model, groups, batches, config.search_tokens)

    def plan_for(alpha: float) -> list[tuple[Group, torch.Tensor]]:
        # every group's scales from the parent's weights, then folded together (the fold of
        # a v -> out group rescales rows of a q/k/v consumer: folded_weight sees both)
        return [(g, smooth_scales(g, st, alpha)) for g, st in zip(groups, stats, strict=True)]

    per_alpha = None
    if config.alpha is None:
        per_alpha = {f"{a:g}": int8_error(groups, stats, plan_for(a), config.per_channel)
                     for a in config.alphas}
        alpha = min(config.alphas, key=lambda a: per_alpha[f"{a:g}"])
    else:
        alpha = config.alpha
    plan = plan_for(alpha)
    chosen = per_alpha[f"{alpha:g}"] if per_alpha else int8_error(groups, stats, plan,
                                                                  config.per_channel)
    before = [outlier_ratio(st.absmax) for st in stats]
    after = [outlier_ratio(st.absmax / s) for st, (_, s) in zip(stats, plan, strict=True)]
    unsmoothed = int8_error(groups, stats, [], config.per_channel)
    for g, s in plan:
        fold(g, s)
    every = torch.cat([s for _, s in plan])
    return SmoothQuantAudit(
        method="smoothquant", alpha=alpha, searched=config.alpha is None,
        int8_error_per_alpha=per_alpha, int8_error_unsmoothed=unsmoothed,
        int8_error_chosen=chosen, groups=len(groups),
        linears=sum(len(g.consumers) for g in groups), group_names=[g.name for g in groups],
        lm_head_untied=untied, skipped=skipped,
        outlier_ratio_before=sum(before) / len(before),
        outlier_ratio_after=sum(after) / len(after), worst_outlier_ratio_before=max(before),
        worst_outlier_ratio_after=max(after), scale_min=float(every.min()),
        scale_max=float(every.max()), per_channel=config.per_channel,
        calibration=SmoothingCalibration(
            samples=len(batches), seq_len=int(batches[0].shape[-1]),
            tokens_searched=int(stats[0].sample.shape[0]), source=source),
        note="exact fp32 transform: the int8 gain appears once ort_static_int8 quantizes "
             "the exported graph")


@register_step("smoothquant", SmoothQuantConfig,
               help="SmoothQuant: fold per-channel scales (activation outliers -> weights) "
                    "into norms/linears before static int8; exact in fp32")
def _apply_smoothquant(parent: LoadedModel, config: SmoothQuantConfig,
                       out: Path) -> StepReport:
    require_fp32(parent.model, "smoothquant")
    model = copy.deepcopy(parent.model)
    batches = parent_calibration(parent, config.calib_samples, config.calib_seq_len)
    source = "corpus train split" if parent.tokenizer is not None else "seeded random ids"
    audit = smoothquant(model, config, batches, source)
    return smoothed_child(parent, model, out, audit,
                          f"float32 (SmoothQuant alpha {audit.alpha:g} folded)")

"""Unstructured pruning: magnitude (per layer or global), Wanda, SparseGPT, and N:M masks.

Masks are made permanent (pruned weights are stored as zeros), and the audit counts the zeros
that are really there. Dense kernels do the same work on zeros, so none of this speeds up
inference by itself; the manifest says so and reports what sparse storage would weigh.

Wanda (Sun et al., 2023) scores a weight by |W_ij| * ||X_j||_2, the norm of its input feature
over calibration tokens, and prunes within each output row. torch-pruning's unstructured
support is magnitude-only and offers neither Wanda nor N:M, so both are written here; they are
a few tensor operations each. SparseGPT (``compress/sparsegpt.py``) also re-fits the kept
weights from the layer's inputs.

Wanda and SparseGPT calibrate layer-wise and sequentially: block k's input statistics come from
the model whose blocks 0..k-1 are already pruned. An embedding (and the lm_head tied to it) is
scored by magnitude under every method: its input is a token id, not an activation; it is
pruned first, so the blocks are calibrated on what they will see.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from slimbench.compress.calibration import parent_calibration
from slimbench.compress.loader import LoadedModel, count_parameters
from slimbench.compress.manifest import StepReport
from slimbench.compress.parity import parity, reference_prompts, torch_logits_fn
from slimbench.compress.sparsegpt import BLOCK_SIZE, DAMP, prune_sequentially, sparsegpt_prune
from slimbench.compress.step_io import save_model
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.schema.codec import Typed

METHODS = ("magnitude", "wanda", "sparsegpt")
SCOPES = ("layer", "global")
_NM = re.compile(r"^(\d+):(\d+)$")
NO_SPEEDUP = ("unstructured sparsity: the weights are stored dense with zeros; dense kernels do "
              "the same work, so expect no latency or memory gain from this step alone")


@dataclasses.dataclass(frozen=True)
class UnstructuredPruneConfig:
    """Args:
        method: ``magnitude``, ``wanda`` or ``sparsegpt`` (the last two need calibration
            activations).
        sparsity: share of weights to zero in the pruned layers (implied by ``n_m`` if given).
        scope: ``layer`` (each layer to ``sparsity``) or ``global`` (one magnitude threshold
            over all pruned layers; magnitude only, Wanda always compares within a row).
        n_m: semi-structured ``"N:M"`` masks: N of every M consecutive input weights kept.
        include_embeddings: prune the token embedding too (tied to lm_head in GPT-2).
        include_lm_head: prune an untied lm_head.
        calib_samples: calibration sequences for Wanda / SparseGPT (corpus train split).
        calib_seq_len: tokens per calibration sequence.
        block_size: SparseGPT: columns per lazy batch update (and per unstructured mask).
        damp: SparseGPT: share of the mean Hessian diagonal added to it.
    """

    method: str = "magnitude"
    sparsity: float | None = None
    scope: str = "layer"
    n_m: str | None = None
    include_embeddings: bool = False
    include_lm_head: bool = False
    calib_samples: int = 16
    calib_seq_len: int = 128
    block_size: int = BLOCK_SIZE
    damp: float = DAMP

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"pruning method must be one of {METHODS}, got {self.method!r}")
        if self.scope not in SCOPES:
            raise UsageError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.n_m is not None:
            n, m = parse_n_m(self.n_m)
            if self.sparsity is not None and abs(self.sparsity - (1 - n / m)) > 1e-9:
                raise UsageError(f"n_m {self.n_m} implies sparsity {1 - n / m:g}; "
                                 f"drop sparsity={self.sparsity} or make it agree")
            if self.scope != "layer":
                raise UsageError("n_m masks are per row; scope must be 'layer'")
        elif self.sparsity is None:
            raise UsageError("give sparsity (e.g. 0.5) or n_m (e.g. '2:4')")
        elif not 0 < self.sparsity < 1:
            raise UsageError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.method != "magnitude" and self.scope == "global":
            raise UsageError(f"{self.method} prunes layer by layer; use scope 'layer'")
        if self.block_size < 1 or not self.damp > 0:
            raise UsageError("block_size must be >= 1 and damp > 0")
        if self.method == "sparsegpt" and self.n_m and self.block_size % parse_n_m(self.n_m)[1]:
            raise UsageError(f"block_size {self.block_size} must be a multiple of M in n_m "
                             f"{self.n_m}")
        if self.calib_samples < 1 or self.calib_seq_len < 2:
            raise UsageError("calib_samples must be >= 1 and calib_seq_len >= 2")

    @property
    def target_sparsity(self) -> float:
        if self.n_m is not None:
            n, m = parse_n_m(self.n_m)
            return 1 - n / m
        return float(self.sparsity)


def parse_n_m(text: str) -> tuple[int, int]:
    match = _NM.match(str(text))
    if not match:
        raise UsageError(f"n_m must look like '2:4', got {text!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise UsageError(f"n_m {text}: need 0 < N < M")
    return n, m


def _rows_view(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in): Conv1D stores (in, out), so its transpose (a view)."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def prunable_layers(model: nn.Module, config: UnstructuredPruneConfig) -> dict[str, nn.Module]:
    """Block projections, plus the embedding / an untied lm_head when asked.

    Module names come from the model itself (``transformer.wte``, ``model.embed_tokens``,
    ``gpt_neox.embed_in``...), so every family is covered without a name list.
    """
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    names = {mod: name for name, mod in model.named_modules()}
    layers = {name: mod for name, mod in model.named_modules()
              if isinstance(mod, (nn.Linear, Conv1D)) and mod is not head}
    tied = head is not None and head.weight is emb.weight
    if config.include_embeddings or (config.include_lm_head and tied):
        layers[names[emb]] = emb
    if config.include_lm_head and not tied and head is not None:
        layers[names[head]] = head
    return layers


def _mask_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask with exactly the ``k`` lowest scores (of the flattened tensor) off."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores.flatten(), stable=True)[:k]] = False
    return keep.view_as(scores)


def _row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per output row (dim 0 of (out, in)), the lowest ``sparsity`` share off."""
    k = round(sparsity * scores.shape[1])
    order = torch.argsort(scores, dim=1, stable=True)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, order[:, :k], False)
    return keep


def _n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In each group of ``m`` consecutive input weights of a row, keep the ``n`` best."""
    rows, cols = scores.shape
    if cols % m:
        raise UsageError(f"n_m {n}:{m}: input width {cols} is not a multiple of {m}")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.argsort(groups, dim=2, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, order[..., :n], True)
    return keep.reshape(rows, cols)


@dataclasses.dataclass(frozen=True)
class SparsityAudit(Typed):
    """The zeros really present in the pruned layers (the manifest's ``sparsity``).

    Attributes:
        method: magnitude, wanda or sparsegpt.
        scope: layer or global.
        n_m: the N:M pattern, or null.
        requested: the sparsity asked for.
        realized: zeros over weights of the pruned layers, counted.
        pruned_weights: weights in the pruned layers.
        zeros: of those, exactly zero.
        per_layer: realized sparsity per layer name (6 decimals).
        dense_bytes_of_pruned_layers: the pruned layers stored dense.
        csr_bytes_of_pruned_layers: the same stored as CSR (values, int32 column indices and
            row pointers): what sparse storage would weigh.
        note: that dense kernels gain nothing from these zeros.
    """

    method: str
    scope: str
    n_m: str | None
    requested: float
    realized: float
    pruned_weights: int
    zeros: int
    per_layer: dict[str, float]
    dense_bytes_of_pruned_layers: int
    csr_bytes_of_pruned_layers: int
    note: str


@torch.no_grad()
def prune_unstructured(model: nn.Module, config: UnstructuredPruneConfig,
                       calibration: list | None = None) -> SparsityAudit:
    """Zero weights of ``model`` in place; returns the sparsity audit.

    Args:
        calibration: token-id batches (train split), for Wanda and SparseGPT.
    """
    if config.method != "magnitude" and not calibration:
        raise UsageError(f"{config.method} needs calibration batches")
    layers = prunable_layers(model, config)
    if config.method == "magnitude":
        _prune_by_magnitude(layers, config)
        return sparsity_audit(layers, config)
    embeddings = {n: m for n, m in layers.items() if isinstance(m, nn.Embedding)}
    for mod in embeddings.values():
        _apply(mod, _mask(_rows_view(mod).float().abs(), config))
    seen = {n: m for n, m in layers.items() if n not in embeddings}
    sparsegpt = config.method == "sparsegpt"

    def prune(_name: str, mod: nn.Module, stat: torch.Tensor, tokens: int) -> None:
        w = _rows_view(mod)  # (out, in)
        if sparsegpt:
            n_m = parse_n_m(config.n_m) if config.n_m else None
            new = sparsegpt_prune(w, stat * (2 / tokens), config.target_sparsity, n_m,
                                  config.block_size, config.damp)
            w.copy_(new.to(w.dtype))  # writes through the view
        else:  # Wanda: |W_ij| * ||X_j||_2
            _apply(mod, _mask(w.float().abs() * stat.sqrt().float()[None, :], config))

    prune_sequentially(model, seen, calibration, gram=sparsegpt, prune=prune)
    return sparsity_audit(layers, config)


def _mask(scores: torch.Tensor, config: UnstructuredPruneConfig) -> torch.Tensor:
    """Keep-mask of one layer's (out, in) scores: N:M groups, rows (Wanda) or the layer."""
    if config.n_m is not None:
        return _n_m_mask(scores, *parse_n_m(config.n_m))
    if config.method == "wanda":
        return _row_mask(scores, config.target_sparsity)
    return _mask_lowest(scores, round(config.target_sparsity * scores.numel()))


def _apply(mod: nn.Module, keep: torch.Tensor) -> None:
    _rows_view(mod).mul_(keep.to(mod.weight.dtype))  # writes through the view


def _prune_by_magnitude(layers: dict[str, nn.Module], config: UnstructuredPruneConfig) -> None:
    scores = {name: _rows_view(mod).float().abs() for name, mod in layers.items()}
    if config.scope == "global":
        flat = torch.cat([s.flatten() for s in scores.values()])
        keep_all = _mask_lowest(flat, round(config.target_sparsity * flat.numel()))
        start = 0
        for name, s in scores.items():
            _apply(layers[name], keep_all[start: start + s.numel()].view_as(s))
            start += s.numel()
        return
    for name, s in scores.items():
        _apply(layers[name], _mask(s, config))


def sparsity_audit(layers: dict[str, nn.Module],
                   config: UnstructuredPruneConfig) -> SparsityAudit:
    """Zeros really present per layer and overall, and what CSR storage of them would weigh."""
    per_layer, zeros, total, csr_bytes, dense_bytes = {}, 0, 0, 0, 0
    for name, mod in layers.items():
        w = _rows_view(mod).detach()
        z = int((w == 0).sum())
        per_layer[name] = round(z / w.numel(), 6)
        zeros, total = zeros + z, total + w.numel()
        # CSR: the nonzero values, an int32 column index each, an int32 pointer per row + 1
        csr_bytes += (w.numel() - z) * (w.element_size() + 4) + 4 * (w.shape[0] + 1)
        dense_bytes += w.numel() * w.element_size()
    return SparsityAudit(
        method=config.method, scope=config.scope, n_m=config.n_m,
        requested=config.target_sparsity, realized=zeros / total, pruned_weights=total,
        zeros=zeros, per_layer=per_layer, dense_bytes_of_pruned_layers=dense_bytes,
        csr_bytes_of_pruned_layers=csr_bytes, note=NO_SPEEDUP)


def rounding(model: nn.Module, config: UnstructuredPruneConfig) -> float:
    """How far the realized share may be from the requested one by rounding k = round(s * n)
    alone: half a weight of the narrowest unit that is rounded (a row for Wanda, a block of
    ``block_size`` columns, or the narrower last one, for SparseGPT), at least 1e-3."""
    if config.method == "magnitude" or config.n_m is not None:
        return 1e-3
    units = []
    for mod in prunable_layers(model, config).values():
        rows, cols = _rows_view(mod).shape
        units.append(cols if config.method == "wanda"
                     else rows * (cols % config.block_size or config.block_size))
    return max(1e-3, 0.5 / min(units))


# version 2: Wanda calibrates block by block on the already pruned model (was: one dense pass)
@register_step("prune_unstructured", UnstructuredPruneConfig, version=2,
               help="magnitude / Wanda / SparseGPT / N:M unstructured pruning (zeros stored; "
                    "no dense speedup)")
def _apply_prune_unstructured(parent: LoadedModel, config: UnstructuredPruneConfig,
                              out: Path) -> StepReport:
    model = copy.deepcopy(parent.model)
    batches = (parent_calibration(parent, config.calib_samples, config.calib_seq_len)
               if config.method != "magnitude" else None)
    audit = prune_unstructured(model, config, batches)
    # exact counts: k = round(s * n) zeros per layer (per row for Wanda, whose rows of 192
    # inputs round 0.3 to 58/192 = 0.302; per block of columns for SparseGPT), so the overall
    # share is within that rounding
    if abs(audit.realized - audit.requested) > rounding(model, config):
        raise CompressionError(f"realized sparsity {audit.realized:.4f} does not match the "
                               f"requested {audit.requested:.4f}")
    save_model(model, parent.tokenizer, out)
    params, nonzero = count_parameters(model)
    prompts = reference_prompts(parent.tokenizer, model.config.vocab_size)
    return StepReport(
        format="hf", parameters=params, nonzero_parameters=nonzero,
        dtypes={"weights": "float32 (dense, zeros stored)"}, sparsity=audit,
        parity=parity(torch_logits_fn(parent.model), torch_logits_fn(model), prompts))

"""SparseGPT (Frantar & Alistarh, 2023) and the layer-wise calibration pass it shares with Wanda.

SparseGPT prunes a linear layer column by column and, after each column, moves the error of
the weights it zeroed onto the columns not yet visited (an optimal brain surgeon update with
the inverse Hessian of the layer's reconstruction loss ||W'X - WX||^2, H = 2/n X^T X). The
kept weights are re-fitted, not just kept: that is what lets it beat magnitude and Wanda at
the same sparsity, and why it needs the layer's inputs X.

Written here rather than taken from llm-compressor (which implements it, as SparseML did):
llm-compressor 0.14 requires transformers >=5.15,<=5.17 (this project runs 5.24, so
installing it would downgrade transformers) and pulls datasets, accelerate, auto-round,
compressed-tensors and nvidia-ml-py into a CPU install. The algorithm is ~40 lines of tensor
algebra.

Calibration is layer-wise and sequential: the inputs of block k are computed by the model
whose blocks 0..k-1 are already pruned, so each block is fitted to what it will really see.
For each block the whole model runs on the calibration batches with hooks on that block's
layers only and stops once the block has run; one pass per block, cheap for the models here
and the same for every family (no per-family code to feed a block its inputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from slimbench.errors import CompressionError

BLOCK_SIZE = 128  # columns per lazy batch update (the paper's B)
DAMP = 0.01  # share of mean(diag H) added to the diagonal (the paper's lambda)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask with exactly the ``k`` lowest scores of the flattened tensor set: argsort,
    not a ``<=`` threshold, so ties cannot prune more than ``k``."""
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    if k > 0:
        out[torch.argsort(scores.flatten(), stable=True)[:k]] = True
    return out.view_as(scores)


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    n_m: tuple[int, int] | None = None, block_size: int = BLOCK_SIZE,
                    damp: float = DAMP) -> torch.Tensor:
    """One layer pruned by SparseGPT, its kept weights re-fitted.

    Computed in float64: H sums X^T X over thousands of tokens, and the Cholesky factors and
    the column-by-column updates then agree across CPUs (AVX2, AVX-512, AMX sum in different
    orders) to far below anything the masks could flip on; the layers here are small enough
    that the cost does not matter.

    Args:
        weight: (out, in), not modified.
        hessian: (in, in), ``2/n sum X^T X`` over the calibration tokens (any positive scale:
            the updates are invariant to it).
        sparsity: share of weights zeroed in each block of ``block_size`` columns, exactly
            ``round(sparsity * block numel)`` of them (unstructured; ignored with ``n_m``).
        n_m: ``(n, m)``: in every group of ``m`` consecutive inputs of a row, ``n`` kept. Each
            group's mask is chosen when the pass reaches it, on the already updated weights.
        block_size: columns per lazy batch update; a multiple of ``m`` under ``n_m``.
        damp: share of the mean Hessian diagonal added to it.

    Returns:
        The pruned weight (out, in) in float64; pruned entries exactly 0.

    Raises:
        CompressionError: the damped Hessian is not positive definite.
    """
    w = weight.detach().to(torch.float64).clone()  # (out, in)
    h = hessian.detach().to(torch.float64).clone()  # (in, in)
    rows, cols = w.shape
    if n_m is not None and block_size % n_m[1]:
        raise CompressionError(f"block size {block_size} is not a multiple of M={n_m[1]}")
    # inputs never active on the calibration data: nothing to fit, so prune them first
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    diag = torch.arange(cols)
    h[diag, diag] += damp * torch.diag(h).mean()
    try:  # the upper Cholesky factor of H^-1: row i holds the updates that column i causes
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)),
                                     upper=True)
    except RuntimeError as e:  # torch.linalg.LinAlgError
        raise CompressionError(f"sparsegpt: the damped Hessian is not positive definite "
                               f"({e}); raise damp") from e
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].clone()  # (out, b)
        hinv1 = hinv[i1:i2, i1:i2]  # (b, b)
        d = torch.diag(hinv1)  # (b,)
        err1 = torch.zeros_like(w1)
        if n_m is None:  # OBS saliency w^2 / [H^-1]_ii^2, lowest pruned
            pruned = _lowest(w1 ** 2 / d[None, :] ** 2, round(sparsity * w1.numel()))
        else:
            pruned = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if n_m is not None and i % n_m[1] == 0:
                n, m = n_m
                score = w1[:, i:i + m] ** 2 / d[None, i:i + m] ** 2  # (out, m)
                drop = torch.topk(score, m - n, dim=1, largest=False).indices
                pruned[:, i:i + m] = torch.zeros_like(score, dtype=torch.bool).scatter_(
                    1, drop, True)
            col = w1[:, i]
            q = col.masked_fill(pruned[:, i], 0.0)
            err = (col - q) / d[i]  # (out,)
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            w1[:, i] = q  # exactly 0 where pruned (the update leaves rounding residue)
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # the block's errors onto the later columns
    return w


class _Stop(Exception):
    """Raised by a hook once the block being calibrated has run: the rest of the forward
    cannot change its inputs."""


def _raise_stop(*_) -> None:
    raise _Stop


@torch.no_grad()
def input_statistics(model: nn.Module, layers: dict[str, nn.Module], batches: list,
                     gram: bool, stop_after: nn.Module | None = None) -> dict:
    """Sums over the calibration tokens of each layer's inputs x (in,).

    Args:
        gram: sum x x^T (in, in) for SparseGPT's Hessian; else sum x^2 (in,) (Wanda needs
            only the diagonal, and a full Gram matrix per layer is wasted memory).
        stop_after: end each forward once this module has run.

    Returns:
        {layer name: (sum in float64, token count)}.
    """
    sums: dict[str, list] = {}
    hooks = []
    for name, mod in layers.items():
        def hook(_m, args, name=name):
            x = args[0].detach().to(torch.float64).reshape(-1, args[0].shape[-1])  # (tok, in)
            s = x.t() @ x if gram else (x * x).sum(0)
            acc = sums.setdefault(name, [0, 0])
            acc[0], acc[1] = acc[0] + s, acc[1] + x.shape[0]
        hooks.append(mod.register_forward_pre_hook(hook))
    if stop_after is not None:
        hooks.append(stop_after.register_forward_hook(_raise_stop))
    was_training = model.training
    model.eval()
    try:
        for ids in batches:
            with contextlib.suppress(_Stop):
                model(input_ids=torch.as_tensor(ids), use_cache=False)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    missing = set(layers) - set(sums)
    if missing:
        raise CompressionError(f"no calibration input reached {sorted(missing)}")
    return {name: (s, n) for name, (s, n) in sums.items()}


def layer_groups(model: nn.Module, names) -> list[tuple[nn.Module | None, list[str]]]:
    """The layers by decoder block, in order, each with the block to stop after; then the
    layers in no block (an untied lm_head), which see the whole pruned model.

    A module without a config (a bare layer in a test) is one group.

    Raises:
        UsageError: a model of a family slimbench does not know (``arch_of``).
    """
    if getattr(model, "config", None) is None:
        return [(None, list(names))]
    from slimbench.compress.arch import arch_of

    arch = arch_of(model, "prune_unstructured")
    blocks = arch.block_list(model)
    by_block: dict[int, list[str]] = {}
    rest = []
    for name in names:
        match = arch.block_pattern.search(name)
        if match:
            by_block.setdefault(int(match.group(1)), []).append(name)
        else:
            rest.append(name)
    groups = [(blocks[k], by_block[k]) for k in sorted(by_block)]
    return groups + ([(None, rest)] if rest else [])


def prune_sequentially(model: nn.Module, layers: dict[str, nn.Module], batches: list,
                       gram: bool, prune: Callable[[str, nn.Module, torch.Tensor, int], None],
                       ) -> None:
    """Block by block: collect the inputs of the block's layers on the model whose earlier
    blocks are already pruned, then ``prune(name, module, sum, tokens)`` each of them.

    All layers of a block are calibrated in one pass before any of them is pruned (as in
    SparseGPT's reference code): q/k/v and the MLP see the block's dense inputs.
    """
    for stop, names in layer_groups(model, layers):
        group = {name: layers[name] for name in names}
        stats = input_statistics(model, group, batches, gram, stop_after=stop)
        for name, mod in group.items():
            prune(name, mod, *stats[name])

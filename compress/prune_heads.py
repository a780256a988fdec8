"""Attention-head pruning for every family in ``compress/arch.py``.

torch-pruning traces tensors, not heads: it cannot see that a projection's rows are cut into
heads by ``view`` (and, for a fused projection, by ``split`` or ``chunk``), so it offers no group
that removes one head. This module knows where each head's channels sit for the three qkv
layouts and calls torch-pruning's own Linear pruners (``prune_linear_out_channels`` on q/k/v
rows, ``prune_linear_in_channels`` on the output projection's columns) on exactly those, which
also cuts the matching bias entries (Qwen2's q/k/v bias, OPT's and GPT-NeoX's biases).

The unit removed is a KV group: one key/value head and the query heads that read it
(``heads / kv_heads`` of them, consecutive, as ``repeat_kv`` expands them). Without
grouped-query attention a group is one head. Removing whole groups keeps the query-per-KV ratio
unchanged, so ``num_key_value_groups`` stays valid in place and in a fresh model.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from slimbench.compress import arch as archs


@dataclasses.dataclass(frozen=True)
class HeadShape:
    """One layer's attention shape (the same in every layer of the families known)."""

    heads: int  # query heads
    kv_heads: int
    head_dim: int

    @property
    def per_group(self) -> int:
        """Query heads sharing one KV head."""
        return self.heads // self.kv_heads

    @classmethod
    def of(cls, cfg) -> HeadShape:
        return cls(archs.n_heads(cfg), archs.n_kv_heads(cfg), archs.head_dim(cfg))

    def kept(self, kv_kept: int) -> HeadShape:
        return HeadShape(kv_kept * self.per_group, kv_kept, self.head_dim)


def _span(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


def head_channels(arch: archs.Arch, shape: HeadShape,
                  groups: list[int]) -> list[tuple[str, str, list[int]]]:
    """Where KV ``groups`` live: (block-relative module path, ``out`` rows | ``in`` columns,
    channel indices) for each projection they touch."""
    d, g = shape.head_dim, shape.per_group
    q_heads = [h for grp in groups for h in range(grp * g, (grp + 1) * g)]
    cols = [c for h in q_heads for c in _span(h * d, d)]  # output projection's input columns
    if arch.qkv_layout == "separate":
        kv_rows = [r for grp in groups for r in _span(grp * d, d)]
        q, k, v = arch.qkv
        return [(q, "out", cols), (k, "out", kv_rows), (v, "out", kv_rows),
                (arch.out_proj, "in", cols)]
    if shape.kv_heads != shape.heads:  # a fused projection with GQA is not a layout we know
        raise ValueError(f"{arch.family}: fused qkv with grouped-query attention")
    width = shape.heads * d
    if arch.qkv_layout == "stacked":  # GPT-2: rows [q heads | k heads | v heads]
        rows = [part * width + c for part in range(3) for c in cols]
    elif arch.qkv_layout == "interleaved":  # GPT-NeoX: rows (heads, [q | k | v], head_dim)
        rows = [r for h in q_heads for r in _span(h * 3 * d, 3 * d)]
    else:
        raise ValueError(f"{arch.family}: unknown qkv layout {arch.qkv_layout!r}")
    return [(arch.qkv[0], "out", rows), (arch.out_proj, "in", cols)]


def group_scores(block: nn.Module, arch: archs.Arch, shape: HeadShape,
                 taylor: bool) -> torch.Tensor:
    """One score per KV group: the L2 norm of its q/k/v rows and output-projection columns
    (magnitude), or the sum of |w * dL/dw| over them (Taylor, ``.grad`` already filled)."""
    scores = torch.zeros(shape.kv_heads, dtype=torch.float64)
    for grp in range(shape.kv_heads):
        for path, side, idxs in head_channels(arch, shape, [grp]):
            w = block.get_submodule(path).weight
            c = ((w * w.grad).abs() if taylor else w * w).detach()
            scores[grp] += float(c[idxs].sum() if side == "out" else c[:, idxs].sum())
    return scores if taylor else scores.sqrt()


def prune_groups(block: nn.Module, arch: archs.Arch, shape: HeadShape,
                 drop: list[int]) -> None:
    """The custom pruning function: remove KV ``groups`` (and their query heads) from one
    block with torch-pruning's Linear pruners (weights and biases alike)."""
    import torch_pruning as tp

    for path, side, idxs in head_channels(arch, shape, drop):
        prune = tp.prune_linear_out_channels if side == "out" else tp.prune_linear_in_channels
        prune(block.get_submodule(path), idxs)


def set_head_attrs(block: nn.Module, arch: archs.Arch, shape: HeadShape) -> None:
    """Reset what the attention module derived from the old config at construction, so the
    pruned model runs in place (the fresh model built from the new config gets them anew)."""
    attn = block.get_submodule(arch.attention)
    values = {"num_heads": shape.heads, "num_key_value_heads": shape.kv_heads,
              "embed_dim": shape.heads * shape.head_dim,
              "split_size": shape.heads * shape.head_dim}
    for name in arch.head_attrs:
        if name not in values:  # a new family's attribute: say so instead of leaving it stale
            raise ValueError(f"{arch.family}: no pruned value for attention attribute {name!r}")
        setattr(attn, name, values[name])

"""Int8 token embedding and output projection for torch dynamic int8 (``include_embeddings``).

On GPT-2 the tied 50257 x 768 embedding is a third of the model; kept float it holds the int8
artifact at half the fp32 file. Both ends are quantized per row (symmetric, one scale per token,
which per-tensor scales cannot match on an embedding whose rows differ in norm) from one int8
matrix: the input side as torch's quantized ``Embedding`` (a byte lookup), the output side as a
dynamic int8 ``Linear`` with per-output-channel scales. A tied pair is one matrix on disk.

By hand because torch.ao's ``quantize_dynamic`` covers Linears only and its embedding qconfig
gives the two ends different matrices (asymmetric uint8 rows vs symmetric int8), which would
store a tied weight twice.
"""

from __future__ import annotations

import torch
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

TIED_TO = "_slimbench_int8_tied_to"  # on an int8 output projection: its embedding's name


def per_row_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float64 scale per row) of ``weight``: symmetric, rows scaled to 127."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny).double()
    q = torch.round(w / scale[:, None].float()).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def int8_embedding(q: torch.Tensor, scale: torch.Tensor) -> nnq.Embedding:
    """torch's quantized Embedding holding ``q * scale`` exactly: it takes unsigned bytes with
    a float zero point per row, so the int8 values are shifted by 128 and the zero point too."""
    emb = nnq.Embedding(q.shape[0], q.shape[1], dtype=torch.quint8)
    shifted = (q.to(torch.int16) + 128).to(torch.uint8)
    emb.set_weight(torch._make_per_channel_quantized_tensor(
        shifted, scale, torch.full_like(scale, 128.0), 0))
    return emb


def int8_projection(q: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None) -> nnqd.Linear:
    """A dynamic int8 Linear whose weight is ``q * scale`` with one scale per output row."""
    lin = nnqd.Linear(q.shape[1], q.shape[0], bias_=bias is not None, dtype=torch.qint8)
    lin.set_weight_bias(torch._make_per_channel_quantized_tensor(
        q, scale, torch.zeros(len(scale), dtype=torch.int64), 0), bias)
    return lin


def embedding_int8(emb: nnq.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, per-row scales) of an ``int8_embedding``: the inverse of its shift."""
    w = emb.weight()
    q = (w.int_repr().to(torch.int16) - 128).to(torch.int8)
    return q.contiguous(), w.q_per_channel_scales().double()


def quantize_embeddings(model: nn.Module) -> None:
    """Replace the input embedding and the output projection by their per-row int8 forms
    (in place); a tied pair is quantized once and the projection marked ``TIED_TO``."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {mod: name for name, mod in model.named_modules() if mod in (emb, head)}
    q, scale = per_row_int8(emb.weight)
    _replace(model, names[emb], int8_embedding(q, scale))
    if head is None:
        return
    tied = head.weight is emb.weight
    if not tied:
        q, scale = per_row_int8(head.weight)
    bias = getattr(head, "bias", None)
    projection = int8_projection(q, scale, None if bias is None else bias.detach())
    if tied:
        setattr(projection, TIED_TO, names[emb])
    _replace(model, names[head], projection)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)

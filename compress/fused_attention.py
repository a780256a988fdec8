"""Fused attention for the ONNX export: every attention layer becomes one ONNX Runtime
``com.microsoft::GroupQueryAttention`` node that updates the KV cache in place.

Why: traced from Hugging Face's modules, attention is a chain of MatMul/Softmax/Concat ops
that ONNX Runtime's optimizer does not fuse on this export (see ``ort_optimize.py``), and its
Concat copies the whole cache into a new present tensor at every decode step, which grows with
batch x context. ``GroupQueryAttention`` (GQA; with as many KV heads as query heads it is plain
multi-head attention) computes attention in one kernel and, when the past and present tensors
are one buffer of ``capacity`` positions, writes only the new positions (ORT calls this
``past_present_share_buffer``). This is how optimum-onnx's and onnxruntime-genai's decoders
are built; here it comes out of the same HF forward as the unfused export, through two
transformers hooks, so every family of ``arch.py`` gets it without a per-family graph rewrite:

- an attention implementation (``AttentionInterface``) that hands q/k/v to the op;
- a cache whose ``update`` returns the new keys and values unchanged (the op concatenates).

Semantics the graph takes from GQA: rows are RIGHT-padded. Row b's real tokens are positions
``0 .. n_b - 1`` with ``n_b = attention_mask[b].sum()``; the op attends to exactly those
(``seqlens_k = n_b - 1``), causally. A left-padded row would attend to its pads, so the
runtime pads on the right for these graphs (``RuntimeBase.greedy_generate_batch``).

Rotary embeddings stay as traced ops (the op's ``do_rotary`` is off): the HF module applies
them before the cache update, so the op receives rotated q/k.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from slimbench.errors import UsageError

IMPLEMENTATION = "slimbench_gqa"
DOMAIN = "com.microsoft"


@dataclasses.dataclass
class _Step:
    """What the attention layers of one traced forward read and write."""

    past: list[torch.Tensor]  # key, value per layer: (B, KV heads, P, D)
    seqlens_k: torch.Tensor  # (B,) int32: each row's total length - 1
    total: torch.Tensor  # (1,) int32: the mask's width (past + new, the longest row)
    present: dict[int, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(
        default_factory=dict)


_ACTIVE: list[_Step] = []  # the step being traced (a stack: tracing is single-threaded)


class _GroupQueryAttention(torch.autograd.Function):
    """The op as the exporter sees it: ``symbolic`` emits the ORT node; ``forward`` is its
    eager reference, which tracing runs for the output shapes and which is exact for rows
    without padding (tests compare the exported graph with the unfused model, not with it).
    """

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, seqlens_k, total, heads: int, kv_heads: int,
                scale: float):
        batch, seq, _ = q.shape
        dim = q.shape[-1] // heads
        # (B, S, N*D) -> (B, N, S, D)
        q4 = q.view(batch, seq, heads, dim).transpose(1, 2)
        k4 = k.view(batch, seq, kv_heads, dim).transpose(1, 2)
        v4 = v.view(batch, seq, kv_heads, dim).transpose(1, 2)
        present_k, present_v = torch.cat([past_k, k4], 2), torch.cat([past_v, v4], 2)
        group = heads // kv_heads
        keys = present_k.repeat_interleave(group, 1)
        values = present_v.repeat_interleave(group, 1)
        length = present_k.shape[2]
        past = length - seq
        query_pos = past + torch.arange(seq)[:, None]
        allowed = torch.arange(length)[None, :] <= query_pos  # causal
        allowed = allowed[None] & (torch.arange(length)[None, None, :]
                                   <= seqlens_k.long()[:, None, None])  # the row's length
        scores = (q4 @ keys.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
        out = (scores.nan_to_num(0.0) @ values).transpose(1, 2).reshape(batch, seq, -1)
        return out, present_k, present_v

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens_k, total, heads, kv_heads, scale):
        return g.op(f"{DOMAIN}::GroupQueryAttention", q, k, v, past_k, past_v, seqlens_k,
                    total, num_heads_i=heads, kv_num_heads_i=kv_heads, scale_f=scale,
                    outputs=3)


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
               **kwargs):
    """An ``AttentionInterface`` function: q (B, N, S, D), k/v (B, KV, S, D) of the new tokens
    only (the cache below does not concatenate) -> (B, S, N, D), no weights."""
    if not _ACTIVE:
        raise RuntimeError(f"attention implementation {IMPLEMENTATION!r} runs only inside "
                           "the fused ONNX export")
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise UsageError("the fused attention export supports neither sliding-window "
                         "attention nor softcapping: export with attention=ops")
    step = _ACTIVE[-1]
    layer = module.layer_idx
    batch, _, seq, _ = query.shape
    # head counts and size are the op's attributes: Python ints (traced sizes are tensors)
    heads, dim, kv_heads = int(query.shape[1]), int(query.shape[3]), int(key.shape[1])
    flat = [t.transpose(1, 2).reshape(batch, seq, -1) for t in (query, key, value)]
    scale = float(dim ** -0.5 if scaling is None else scaling)
    out, present_k, present_v = _GroupQueryAttention.apply(
        *flat, step.past[2 * layer], step.past[2 * layer + 1], step.seqlens_k, step.total,
        heads, kv_heads, scale)
    step.present[layer] = (present_k, present_v)
    return out.view(batch, seq, heads, dim), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, _attention)


def _cache():
    """A cache that hands each layer's new keys and values back unchanged: the op joins
    them with the past itself."""
    from transformers import DynamicCache

    class PassThroughCache(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return key_states, value_states

    return PassThroughCache()


@contextlib.contextmanager
def fused(model: torch.nn.Module, past: list[torch.Tensor], attention_mask: torch.Tensor):
    """Within the block, ``model``'s attention layers emit GroupQueryAttention; yields
    (the cache to pass to the model, the ``_Step`` whose ``present`` fills per layer)."""
    _register()
    mask = attention_mask
    # the mask's width as a tensor, so the exported graph reads it off the input (Shape op)
    total = torch._shape_as_tensor(mask)[1:].to(torch.int32)
    step = _Step(past=list(past), seqlens_k=(mask.sum(1) - 1).to(torch.int32), total=total)
    before = model.config._attn_implementation
    model.config._attn_implementation = IMPLEMENTATION
    _ACTIVE.append(step)
    try:
        yield _cache(), step
    finally:
        _ACTIVE.pop()
        model.config._attn_implementation = before

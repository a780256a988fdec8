"""Architecture descriptions: where a decoder family keeps its blocks, projections and shapes.

Every step after loading (the int8 coverage audit, ONNX export, the ORT runtime's KV cache,
structured pruning, distillation's layer selection) reads a model through one of these
descriptions instead of GPT-2's module names. A family is a set of Hugging Face ``model_type``
values whose causal-LM classes share a module layout:

=========  ==========================  ================================  =====================
family     model types                 attention                         MLP
=========  ==========================  ================================  =====================
gpt2       gpt2                        fused qkv ``c_attn`` [q|k|v]      ``c_fc`` -> ``c_proj``
llama      llama, mistral, qwen2       q/k/v/o, grouped-query KV heads   gate, up -> down
gpt_neox   gpt_neox                    fused qkv, per head [q,k,v]       h_to_4h -> 4h_to_h
opt        opt                         q/k/v/out                         fc1 -> fc2
=========  ==========================  ================================  =====================

Paths are dotted module names: ``blocks`` from the model, the others from one block. Shapes
come from the config through Hugging Face's standard names (``num_hidden_layers``,
``hidden_size``, ...), which GPT-2's config maps onto its own (``n_layer``, ``n_embd``, ...).
"""

from __future__ import annotations

import dataclasses
import re

from torch import nn

from slimbench.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Arch:
    """One decoder family's layout.

    Args:
        family: the family's name.
        model_types: the ``config.model_type`` values it covers.
        blocks: path of the ``ModuleList`` of decoder blocks.
        attention: block-relative path of the attention module.
        qkv: block-relative paths of the q/k/v projections: one fused module or three.
        qkv_layout: ``separate`` (q, k, v modules), ``stacked`` (one module, rows
            [q heads | k heads | v heads], GPT-2) or ``interleaved`` (one module, rows per head
            [q | k | v], GPT-NeoX).
        out_proj: block-relative path of the attention output projection.
        mlp_in: projections whose output channels are the MLP channels (gate and up, or fc).
        mlp_out: the MLP's down projection (its input channels are the MLP channels).
        inner_key: the config field holding the MLP width.
        positions: ``learned`` (a position table) or ``rotary``.
        head_dim_from_width: the config derives the head size as hidden / heads, so removing
            heads must remove as many residual channels (GPT-2, GPT-NeoX, OPT); Llama-style
            configs store ``head_dim`` and keep the residual width.
        head_attrs: attributes of the attention module fixed at construction from the head
            count (set again after pruning heads).
    """

    family: str
    model_types: tuple[str, ...]
    blocks: str
    attention: str
    qkv: tuple[str, ...]
    qkv_layout: str
    out_proj: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    inner_key: str
    positions: str
    head_dim_from_width: bool
    head_attrs: tuple[str, ...] = ()

    @property
    def block_pattern(self) -> re.Pattern:
        """Matches a module name inside block i (group 1 = i)."""
        return re.compile(rf"(?:^|\.){re.escape(self.blocks)}\.(\d+)\.")

    @property
    def onnx_block_pattern(self) -> re.Pattern:
        """Matches an exported ONNX node name inside block i: the TorchScript exporter names
        nodes after the module path, ``/model/layers.3/self_attn/q_proj/MatMul``."""
        last = re.escape(self.blocks.rpartition(".")[2])
        return re.compile(rf"/{last}\.(\d+)/")

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def linears(self) -> tuple[str, ...]:
        """Block-relative paths of every projection of a block."""
        return (*self.qkv, self.out_proj, *self.mlp_in, self.mlp_out)


ARCHS: dict[str, Arch] = {a.family: a for a in (
    Arch("gpt2", ("gpt2",), blocks="transformer.h", attention="attn", qkv=("attn.c_attn",),
         qkv_layout="stacked", out_proj="attn.c_proj", mlp_in=("mlp.c_fc",),
         mlp_out="mlp.c_proj", inner_key="n_inner", positions="learned",
         head_dim_from_width=True, head_attrs=("num_heads", "embed_dim", "split_size")),
    Arch("llama", ("llama", "mistral", "qwen2"), blocks="model.layers", attention="self_attn",
         qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         qkv_layout="separate", out_proj="self_attn.o_proj",
         mlp_in=("mlp.gate_proj", "mlp.up_proj"), mlp_out="mlp.down_proj",
         inner_key="intermediate_size", positions="rotary", head_dim_from_width=False),
    Arch("gpt_neox", ("gpt_neox",), blocks="gpt_neox.layers", attention="attention",
         qkv=("attention.query_key_value",), qkv_layout="interleaved",
         out_proj="attention.dense", mlp_in=("mlp.dense_h_to_4h",), mlp_out="mlp.dense_4h_to_h",
         inner_key="intermediate_size", positions="rotary", head_dim_from_width=True),
    Arch("opt", ("opt",), blocks="model.decoder.layers", attention="self_attn",
         qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         qkv_layout="separate", out_proj="self_attn.out_proj", mlp_in=("fc1",), mlp_out="fc2",
         inner_key="ffn_dim", positions="learned", head_dim_from_width=True,
         head_attrs=("num_heads", "embed_dim")),
)}
_BY_MODEL_TYPE = {t: a for a in ARCHS.values() for t in a.model_types}


def known_families() -> str:
    """``gpt2 (gpt2), llama (llama, mistral, qwen2), ...`` for error messages."""
    return ", ".join(f"{a.family} ({', '.join(a.model_types)})" for a in ARCHS.values())


def arch_of(model_or_config, step: str | None = None) -> Arch:
    """The description of a model's (or config's) family.

    Raises:
        UsageError: for a model type no family covers, naming the families known.
    """
    cfg = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(cfg, "model_type", None)
    arch = _BY_MODEL_TYPE.get(model_type)
    if arch is None:
        who = f"{step}: " if step else ""
        raise UsageError(f"{who}model type {model_type!r} is not an architecture slimbench "
                         f"knows; known families (model types): {known_families()}")
    return arch


# Shapes read from a config. Hugging Face's standard attribute names work on every family:
# GPT2Config maps them onto n_layer, n_embd, n_head and n_positions.
def n_layers(cfg) -> int:
    return int(cfg.num_hidden_layers)


def hidden_size(cfg) -> int:
    return int(cfg.hidden_size)


def n_heads(cfg) -> int:
    return int(cfg.num_attention_heads)


def n_kv_heads(cfg) -> int:
    """Key/value heads: fewer than the query heads under grouped-query attention."""
    return int(getattr(cfg, "num_key_value_heads", None) or n_heads(cfg))


def head_dim(cfg) -> int:
    return int(getattr(cfg, "head_dim", None) or hidden_size(cfg) // n_heads(cfg))


def max_positions(cfg) -> int:
    return int(cfg.max_position_embeddings)


def mlp_width(cfg) -> int:
    """The MLP's inner width (GPT-2's ``n_inner=None`` means 4 x hidden)."""
    value = getattr(cfg, arch_of(cfg).inner_key, None)
    return int(value) if value else 4 * hidden_size(cfg)


def kv_shape(cfg, batch: int, length: int) -> tuple[int, int, int, int]:
    """One layer's key (or value) cache: (batch, KV heads, length, head size)."""
    return batch, n_kv_heads(cfg), length, head_dim(cfg)

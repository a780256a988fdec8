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

A family is one ``Arch`` entry in ``ARCHS`` (here, or from a plugin: ``slimbench/registry.py``),
which also carries the family's ONNX Runtime optimizer model type and its tiny test configs.
Paths are dotted module names: ``blocks`` from the model, the others from one block. Shapes
come from the config through Hugging Face's standard names (``num_hidden_layers``,
``hidden_size``, ...), which GPT-2's config maps onto its own (``n_layer``, ``n_embd``, ...).
"""

from __future__ import annotations

import dataclasses
import re

from torch import nn

from slimbench.errors import UsageError
from slimbench.registry import Registry, unknown_name


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
        ort_model_type: ONNX Runtime's transformer optimizer model type for the family's
            graphs (``ort_optimize``); None: the step refuses the family.
        tiny: {model type: config fields} of a tiny random checkpoint per model type, on top
            of ``TINY_COMMON`` (``tiny_config``): the family tests and
            ``scripts/family_matrix.py`` run on each.
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
    ort_model_type: str | None = None
    tiny: dict[str, dict] = dataclasses.field(default_factory=dict, compare=False)

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


ARCHS: Registry[Arch] = Registry("architecture family")
# ONNX Runtime's optimizer (1.31) knows gpt2 and gpt_neox by name; its qwen3 type is the one
# meant for decoders with RoPE, GQA and RMSNorm; OPT has none: bert is its generic fusion set
for _arch in (
    Arch("gpt2", ("gpt2",), blocks="transformer.h", attention="attn", qkv=("attn.c_attn",),
         qkv_layout="stacked", out_proj="attn.c_proj", mlp_in=("mlp.c_fc",),
         mlp_out="mlp.c_proj", inner_key="n_inner", positions="learned",
         head_dim_from_width=True, head_attrs=("num_heads", "embed_dim", "split_size"),
         ort_model_type="gpt2",
         tiny={"gpt2": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)}),
    Arch("llama", ("llama", "mistral", "qwen2"), blocks="model.layers", attention="self_attn",
         qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         qkv_layout="separate", out_proj="self_attn.o_proj",
         mlp_in=("mlp.gate_proj", "mlp.up_proj"), mlp_out="mlp.down_proj",
         inner_key="intermediate_size", positions="rotary", head_dim_from_width=False,
         ort_model_type="qwen3",
         tiny={"llama": dict(num_key_value_heads=2, intermediate_size=128,
                             tie_word_embeddings=False),
               "qwen2": dict(num_key_value_heads=2, intermediate_size=128,
                             tie_word_embeddings=True)}),
    Arch("gpt_neox", ("gpt_neox",), blocks="gpt_neox.layers", attention="attention",
         qkv=("attention.query_key_value",), qkv_layout="interleaved",
         out_proj="attention.dense", mlp_in=("mlp.dense_h_to_4h",), mlp_out="mlp.dense_4h_to_h",
         inner_key="intermediate_size", positions="rotary", head_dim_from_width=True,
         ort_model_type="gpt_neox",
         tiny={"gpt_neox": dict(intermediate_size=256, rotary_pct=0.25,
                                use_parallel_residual=True, tie_word_embeddings=False)}),
    Arch("opt", ("opt",), blocks="model.decoder.layers", attention="self_attn",
         qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         qkv_layout="separate", out_proj="self_attn.out_proj", mlp_in=("fc1",), mlp_out="fc2",
         inner_key="ffn_dim", positions="learned", head_dim_from_width=True,
         head_attrs=("num_heads", "embed_dim"), ort_model_type="bert",
         tiny={"opt": dict(ffn_dim=256, word_embed_proj_dim=64, pad_token_id=1)}),
):
    ARCHS.add(_arch.family, _arch,
              f"{', '.join(_arch.model_types)}: {_arch.qkv_layout} q/k/v, {_arch.positions} "
              "positions")

# what every tiny checkpoint shares: 2 layers, width 64, 4 heads, the reference's vocabulary
TINY_COMMON = dict(vocab_size=4096, num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                   max_position_embeddings=256, bos_token_id=0, eos_token_id=0)


def tiny_model_types() -> tuple[str, ...]:
    """Every model type with a tiny config, family by family (the family tests' matrix)."""
    return tuple(t for a in ARCHS.values() for t in a.tiny)


def tiny_config(model_type: str, **overrides):
    """The Hugging Face config of a tiny random checkpoint of ``model_type`` (tests, the
    family matrix): ``TINY_COMMON``, the family's ``tiny`` fields, then ``overrides``.

    Raises:
        UsageError: a model type no family has a tiny config for.
    """
    from transformers import AutoConfig

    fields = next((a.tiny[model_type] for a in ARCHS.values() if model_type in a.tiny), None)
    if fields is None:
        raise UsageError(unknown_name("tiny model type", model_type, tiny_model_types()))
    return AutoConfig.for_model(model_type, **(TINY_COMMON | fields | overrides))


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
    arch = next((a for a in ARCHS.values() if model_type in a.model_types), None)
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

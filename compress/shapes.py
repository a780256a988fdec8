"""Random-weight models in the shapes users ship: latency workhorses that need no download.

Each shape is a published configuration of one architecture family (``arch.py``): GPT-2 sizes,
Llama-family models (SmolLM-135M, TinyLlama-1.1B, Qwen2-0.5B), Pythia (GPT-NeoX) and OPT.
Their quality numbers mean nothing, so every model built here is flagged ``random_weights``
and reports never show quality for it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from slimbench.compress.arch import hidden_size, n_heads, n_kv_heads, n_layers
from slimbench.errors import UsageError

# model_type + the published config fields that set the shape (the rest are the family's
# defaults). Sources: the config.json of the hub checkpoints named in each comment.
SHAPES: dict[str, dict] = {
    "gpt2": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12,
             "vocab_size": 50257, "n_positions": 1024},
    "gpt2-medium": {"model_type": "gpt2", "n_layer": 24, "n_embd": 1024, "n_head": 16,
                    "vocab_size": 50257, "n_positions": 1024},
    "distilgpt2": {"model_type": "gpt2", "n_layer": 6, "n_embd": 768, "n_head": 12,
                   "vocab_size": 50257, "n_positions": 1024},
    # HuggingFaceTB/SmolLM-135M
    "llama-135m": {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576,
                   "num_attention_heads": 9, "num_key_value_heads": 3,
                   "intermediate_size": 1536, "vocab_size": 49152,
                   "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                   "tie_word_embeddings": True},
    # TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T
    "tinyllama-1.1b": {"model_type": "llama", "num_hidden_layers": 22, "hidden_size": 2048,
                       "num_attention_heads": 32, "num_key_value_heads": 4,
                       "intermediate_size": 5632, "vocab_size": 32000,
                       "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                       "tie_word_embeddings": False},
    # Qwen/Qwen2-0.5B
    "qwen2-0.5b": {"model_type": "qwen2", "num_hidden_layers": 24, "hidden_size": 896,
                   "num_attention_heads": 14, "num_key_value_heads": 2,
                   "intermediate_size": 4864, "vocab_size": 151936,
                   "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                   "rope_theta": 1_000_000.0, "tie_word_embeddings": True},
    # EleutherAI/pythia-160m
    "pythia-160m": {"model_type": "gpt_neox", "num_hidden_layers": 12, "hidden_size": 768,
                    "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 50304,
                    "max_position_embeddings": 2048, "rotary_pct": 0.25,
                    "use_parallel_residual": True, "tie_word_embeddings": False},
    # facebook/opt-125m
    "opt-125m": {"model_type": "opt", "num_hidden_layers": 12, "hidden_size": 768,
                 "num_attention_heads": 12, "ffn_dim": 3072, "vocab_size": 50272,
                 "max_position_embeddings": 2048, "word_embed_proj_dim": 768,
                 "pad_token_id": 1, "tie_word_embeddings": True},
}
# a shape is built in float32 (the loader casts it afterwards): the peak is 4 bytes a weight
BYTES_PER_PARAM = 4
# overrides that must be positive integers (both naming schemes)
_POSITIVE = {"n_layer", "n_embd", "n_head", "n_inner", "n_positions", "vocab_size",
             "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "ffn_dim", "max_position_embeddings", "head_dim",
             "word_embed_proj_dim"}


def _config_class(model_type: str):
    from transformers import AutoConfig

    return type(AutoConfig.for_model(model_type))


def _fields(model_type: str) -> set[str]:
    """The names a family's config takes: its fields plus its aliases (GPT-2's
    ``hidden_size`` -> ``n_embd``)."""
    cls = _config_class(model_type)
    return set(cls().to_dict()) | set(getattr(cls, "attribute_map", {}))


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """A named shape plus config overrides (e.g. ``num_hidden_layers=2``)."""

    name: str
    overrides: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in SHAPES:
            raise UsageError(f"unknown shape {self.name!r}; known shapes: {', '.join(SHAPES)}")
        model_type = SHAPES[self.name]["model_type"]
        valid = _fields(model_type) - {"model_type"}
        for key, value in self.overrides:
            if key not in valid:
                raise UsageError(f"shape override {key!r} is not a field of the "
                                 f"{_config_class(model_type).__name__} of shape {self.name}")
            if key in _POSITIVE and (not isinstance(value, int) or value <= 0):
                raise UsageError(f"shape override {key}={value!r} must be a positive integer")
        cfg = self.config()
        heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None)
        if not getattr(cfg, "head_dim", None) and cfg.hidden_size % heads:
            raise UsageError(f"hidden size {cfg.hidden_size} is not divisible by "
                             f"{heads} heads")
        if kv and heads % kv:
            raise UsageError(f"{heads} query heads are not divisible into {kv} KV heads")

    def config_dict(self) -> dict[str, Any]:
        """The shape's Hugging Face config fields (``model_type`` included), overrides applied."""
        return {**SHAPES[self.name], **dict(self.overrides)}

    def config(self):
        """The Hugging Face config of this shape."""
        from transformers import AutoConfig

        fields = self.config_dict()
        model_type = fields.pop("model_type")
        if model_type in ("llama", "qwen2"):
            # an explicit head size, as published checkpoints' configs carry it
            fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
        return AutoConfig.for_model(model_type, **fields)

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.overrides)
        return f"shape:{self.name}" + (f":{extra}" if extra else "")

    @classmethod
    def parse(cls, spec: str) -> ShapeSpec:
        """Parse ``shape:NAME[:key=value,key=value]`` (the form the CLI and suites use)."""
        body = spec.removeprefix("shape:")
        name, _, extra = body.partition(":")
        overrides = []
        for item in filter(None, extra.split(",")):
            key, eq, raw = item.partition("=")
            if not eq:
                raise UsageError(f"shape override {item!r} must look like key=value")
            overrides.append((key.strip(), parse_value(raw.strip())))
        return cls(name, tuple(overrides))


def describe(name: str) -> str:
    """One line for ``slimbench ls``: family, depth, width, heads (KV heads), parameters."""
    spec = ShapeSpec(name)
    cfg = spec.config()
    kv = n_kv_heads(cfg)
    heads = f"{n_heads(cfg)} heads" + (f" ({kv} KV)" if kv != n_heads(cfg) else "")
    return (f"random weights, {cfg.model_type}, {n_layers(cfg)} layers, d={hidden_size(cfg)}, "
            f"{heads}, {meta_parameters(spec) / 1e6:.0f} M params")


def meta_parameters(spec: ShapeSpec) -> int:
    """Parameter count of a shape without allocating its weights (tied weights once)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(spec.config())
    return sum(p.numel() for p in model.parameters())


def parse_value(raw: str) -> object:
    """``"2"`` -> 2, ``"0.5"`` -> 0.5, ``"true"`` -> True, anything else stays a string."""
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def available_memory() -> int | None:
    """Bytes of memory this process could still take (Linux's MemAvailable: free memory plus
    the page cache it can drop); the machine's total elsewhere; None where neither is known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(spec: ShapeSpec) -> None:
    """Refuse a shape whose weights cannot fit in memory, before allocating any: building it
    would end in an allocator traceback, or with the machine out of memory (the OOM killer
    picks a process, not necessarily this one). Counted on the meta device: no allocation."""
    params = meta_parameters(spec)
    need = params * BYTES_PER_PARAM
    have = available_memory()
    if have is not None and need > have:
        raise UsageError(f"{spec.label} has {params:,} parameters: about {need / 1e9:,.1f} GB "
                         f"as float32, more than the {have / 1e9:,.1f} GB of memory available "
                         "here; choose a smaller shape")


def build_shape_model(spec: ShapeSpec, seed: int = 0):
    """A model of the given shape with seeded random weights, in eval mode."""
    from transformers import AutoModelForCausalLM

    check_fits(spec)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(spec.config()).eval()

"""Random-weight models in real GPT-2 shapes: latency workhorses that need no download.

Their quality numbers mean nothing, so every model built here is flagged ``random_weights``
and reports never show quality for it.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from slimbench.errors import UsageError

# The published GPT-2 family shapes (vocab 50257, 1024 positions).
SHAPES: dict[str, dict] = {
    "gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12},
    "gpt2-medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16},
    "distilgpt2": {"n_layer": 6, "n_embd": 768, "n_head": 12},
}
_BASE = {"vocab_size": 50257, "n_positions": 1024}


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """A named GPT-2 shape plus ``GPT2Config`` overrides (e.g. ``n_layer=2``)."""

    name: str
    overrides: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in SHAPES:
            raise UsageError(f"unknown shape {self.name!r}; known shapes: {', '.join(SHAPES)}")
        valid = set(inspect.signature(GPT2Config.__init__).parameters) - {"self", "kwargs"}
        for key, value in self.overrides:
            if key not in valid:
                raise UsageError(f"shape override {key!r} is not a GPT2Config field")
            if key in {"n_layer", "n_embd", "n_head", "vocab_size", "n_positions", "n_inner"} \
                    and (not isinstance(value, int) or value <= 0):
                raise UsageError(f"shape override {key}={value!r} must be a positive integer")
        cfg = self.config_dict()
        if cfg["n_embd"] % cfg["n_head"]:
            raise UsageError(f"n_embd={cfg['n_embd']} is not divisible by n_head={cfg['n_head']}")

    def config_dict(self) -> dict:
        return {**_BASE, **SHAPES[self.name], **dict(self.overrides)}

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


def parse_value(raw: str) -> object:
    """``"2"`` -> 2, ``"0.5"`` -> 0.5, ``"true"`` -> True, anything else stays a string."""
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def build_shape_model(spec: ShapeSpec, seed: int = 0) -> GPT2LMHeadModel:
    """A GPT-2 model of the given shape with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    config = GPT2Config(**spec.config_dict())
    model = GPT2LMHeadModel(config)
    return model.eval()

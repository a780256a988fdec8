"""ONNX Runtime's transformer graph optimizer, per family, recording what it fused.

Each family's ``Arch.ort_model_type`` (``compress/arch.py``) names the optimizer's model type:
ORT 1.31's optimizer knows ``gpt2`` and ``gpt_neox`` by name; for Llama-style graphs its
``qwen3`` type is the one meant for decoders with RoPE, GQA and RMSNorm; OPT has none, so it
gets ``bert``, the optimizer's default and generic fusion set. On this project's exports
(ORT 1.31) GPT-2, GPT-NeoX and Llama-style graphs get their norms fused (``SkipLayerNormalization``,
``SkipSimplifiedLayerNormalization``) and GPT-2's and GPT-NeoX's GELU; OPT's graph, whose
residual adds reach the norms through reshapes, only loses shape arithmetic. The optimizer
fuses no attention: the DynamicCache export does not match its attention patterns; export with
``attention=fused`` for an attention kernel (``fused_attention.py``), which this step keeps. Fused
graphs are held to fp32 parity with their parent, prefill and one decode step after a past.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from slimbench.compress.arch import ARCHS, arch_of, hidden_size, n_heads
from slimbench.compress.loader import LoadedModel
from slimbench.compress.manifest import StepReport
from slimbench.compress.onnx_export import ONNX_FILE
from slimbench.compress.onnx_model import OnnxModel
from slimbench.compress.parity import FP32_PARITY
from slimbench.compress.step_io import copy_side_files, onnx_child_fields
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.schema.codec import Typed


def optimizer_model_type(cfg) -> str:
    """The optimizer's model type for ``cfg``'s family: its ``Arch.ort_model_type``.

    Raises:
        UsageError: a model type no family covers, or a family that declares no optimizer
            model type.
    """
    arch = arch_of(cfg, "ort_optimize")
    if not arch.ort_model_type:
        raise UsageError(f"ort_optimize: family {arch.family!r} declares no ONNX Runtime "
                         "optimizer model type (Arch.ort_model_type in its ARCHS entry); "
                         "families that do: " + ", ".join(
                             a.family for a in ARCHS.values() if a.ort_model_type))
    return arch.ort_model_type


@dataclasses.dataclass(frozen=True)
class OrtOptimizeConfig:
    """Args:
        opt_level: ORT graph optimization level applied by the optimizer's session run
            (0 = fusions in Python only; 1/2/99 also run ORT's own optimizer offline).
    """

    opt_level: int = 0

    def __post_init__(self) -> None:
        if self.opt_level not in (0, 1, 2, 99):
            raise UsageError(f"opt_level must be 0, 1, 2 or 99, got {self.opt_level}")


@dataclasses.dataclass(frozen=True)
class Fusions(Typed):
    """What the optimizer fused (the manifest's ``fusions``).

    Attributes:
        model_type: the optimizer's model type it ran with.
        applied: fused op to how many of it the graph now holds (applied fusions only).
        not_applied: the fusions it tried that matched nothing.
    """

    model_type: str
    applied: dict[str, int]
    not_applied: list[str]


def ort_optimize(src: Path, dst: Path, config: OrtOptimizeConfig, model_type: str,
                 num_heads: int, width: int) -> Fusions:
    """Fuse ``src`` into ``dst``; returns the fusions that applied and those that did not.

    Args:
        model_type: the optimizer's model type (``optimizer_model_type``).
        num_heads: query heads (ORT reads KV heads of grouped-query attention off the graph).
        width: the model's hidden size.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    # EmbedLayerNormalization numbers positions from 0 for every run, which is wrong for a
    # decode step after a past; it is BERT's op, never one for these decoders
    options.enable_embed_layer_norm = False
    model = optimize_model(str(src), model_type=model_type, num_heads=num_heads,
                           hidden_size=width, optimization_options=options,
                           opt_level=config.opt_level)
    stats = model.get_fused_operator_statistics()
    model.save_model_to_file(str(dst))
    return Fusions(model_type=model_type,
                   applied={k: int(v) for k, v in sorted(stats.items()) if v},
                   not_applied=sorted(k for k, v in stats.items() if not v))


def decode_drift(parent: OnnxModel, child: OnnxModel, prompt: np.ndarray) -> float:
    """Max |Δlogits| of one decode step after a prefill of ``prompt`` (1, T): the parity
    prompts run with an empty past only, and a fusion may treat a past differently."""
    steps = []
    for model in (parent, child):
        session = model.session()
        _, *present = session.run(None, model.feeds(prompt[:, :-1]))
        feeds = model.feeds(prompt[:, -1:], present)
        steps.append(session.run(["logits"], feeds)[0].astype(np.float64))
    return float(np.abs(steps[0] - steps[1]).max())


# version 2: fusion options per family, EmbedLayerNormalization off, decode parity recorded
@register_step("ort_optimize", OrtOptimizeConfig, accepts=("onnx",), version=2,
               help="ONNX Runtime transformer optimizer (norm/GELU fusions per family) on an "
                    "ONNX artifact")
def _apply_ort_optimize(parent: LoadedModel, config: OrtOptimizeConfig,
                        out: Path) -> StepReport:
    src, cfg = parent.model.path, parent.model.config
    model_type = optimizer_model_type(cfg)
    copy_side_files(src.parent, out)
    dst = out / ONNX_FILE
    fusions = ort_optimize(src, dst, config, model_type, n_heads(cfg), hidden_size(cfg))
    report = onnx_child_fields(parent, dst, "float32", "float32")
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(1, 17))
    checked = dataclasses.replace(report.parity, decode_max_abs_logit_diff=decode_drift(
        parent.model, OnnxModel(dst, cfg), prompt))
    if max(checked.max_abs_logit_diff, checked.decode_max_abs_logit_diff) > FP32_PARITY:
        raise CompressionError(f"optimized graph drifted from its parent: {checked.to_dict()}")
    return dataclasses.replace(report, parity=checked, fusions=fusions)

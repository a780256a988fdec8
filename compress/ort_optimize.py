"""ONNX Runtime's transformer graph optimizer (GPT-2 fusions), recording what it fused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from slimbench.compress.loader import LoadedModel
from slimbench.compress.onnx_export import ONNX_FILE
from slimbench.compress.parity import FP32_PARITY
from slimbench.compress.step_io import copy_side_files, onnx_child_fields
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError


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


def ort_optimize(src: Path, dst: Path, config: OrtOptimizeConfig, n_head: int,
                 hidden_size: int) -> dict:
    """Fuse ``src`` into ``dst``; returns {fusion op: count} for the fusions that applied.

    The attention fusion needs the attention pattern of the optimizer's reference exports; a
    graph exported through a DynamicCache does not match it, which the counts make visible.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type="gpt2", num_heads=n_head,
                           hidden_size=hidden_size, opt_level=config.opt_level)
    stats = model.get_fused_operator_statistics()
    model.save_model_to_file(str(dst))
    return {"applied": {k: v for k, v in sorted(stats.items()) if v},
            "not_applied": sorted(k for k, v in stats.items() if not v)}


@register_step("ort_optimize", OrtOptimizeConfig, accepts=("onnx",),
               help="ONNX Runtime transformer optimizer (GPT-2 fusions) on an ONNX artifact")
def _apply_ort_optimize(parent: LoadedModel, config: OrtOptimizeConfig, out: Path) -> dict:
    src, cfg = parent.model.path, parent.model.config
    copy_side_files(src.parent, out)
    dst = out / ONNX_FILE
    fusions = ort_optimize(src, dst, config, cfg.n_head, cfg.n_embd)
    fields = onnx_child_fields(parent, dst, "float32", "float32")
    if fields["parity"]["max_abs_logit_diff"] > FP32_PARITY:
        raise CompressionError(f"optimized graph drifted from its parent: {fields['parity']}")
    return fields | {"fusions": fusions}

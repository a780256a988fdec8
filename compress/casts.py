"""Half-precision casts: bf16 / fp16 torch checkpoints and fp16 ONNX graphs.

bf16 is the CPU half type (AVX-512 BF16 / AMX run it natively; elsewhere torch emulates it),
fp16 the CUDA one. The weights are *stored* in the half type, so bytes on disk really halve.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from slimbench.compress.loader import DTYPES, LoadedModel, count_parameters
from slimbench.compress.manifest import StepReport
from slimbench.compress.onnx_export import ONNX_FILE
from slimbench.compress.parity import parity, reference_prompts, torch_logits_fn
from slimbench.compress.step_io import copy_side_files, onnx_child_fields, save_model
from slimbench.compress.steps import register_step
from slimbench.errors import UsageError

HALF_DTYPES = ("bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class TorchCastConfig:
    """Args:
        dtype: ``bfloat16`` (CPU) or ``float16`` (CUDA).
    """

    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.dtype not in HALF_DTYPES:
            raise UsageError(f"dtype must be one of {HALF_DTYPES}, got {self.dtype!r}")


@dataclasses.dataclass(frozen=True)
class OrtFp16Config:
    """Args:
        keep_io_types: keep float32 graph inputs/outputs (logits, KV cache) so callers and
            the KV-cache loop need no change; the graph casts at its edges.
    """

    keep_io_types: bool = True


def ort_fp16(src: Path, dst: Path, config: OrtFp16Config) -> None:
    """Convert an fp32 graph to fp16 with ONNX Runtime's transformer float16 converter."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=config.keep_io_types)
    onnx.save(model, str(dst))


@register_step("torch_cast", TorchCastConfig, produces="torch-cast",
               help="store torch weights as bfloat16 (CPU) or float16 (CUDA)")
def _apply_torch_cast(parent: LoadedModel, config: TorchCastConfig, out: Path) -> StepReport:
    params, nonzero = count_parameters(parent.model)
    half = copy.deepcopy(parent.model).to(DTYPES[config.dtype])
    save_model(half, parent.tokenizer, out)
    prompts = reference_prompts(parent.tokenizer, parent.model.config.vocab_size)
    return StepReport(
        format="hf", load_dtype=config.dtype, parameters=params, nonzero_parameters=nonzero,
        dtypes={"weights": config.dtype},
        parity=parity(torch_logits_fn(parent.model), torch_logits_fn(half), prompts))


@register_step("ort_fp16", OrtFp16Config, accepts=("onnx",),
               help="convert an ONNX artifact to float16 (float32 inputs/outputs kept)")
def _apply_ort_fp16(parent: LoadedModel, config: OrtFp16Config, out: Path) -> StepReport:
    src = parent.model.path
    copy_side_files(src.parent, out)
    ort_fp16(src, out / ONNX_FILE, config)
    return onnx_child_fields(parent, out / ONNX_FILE, "float16", "float16")

"""Half-precision casts: bf16 / fp16 torch checkpoints and fp16 ONNX graphs.

bf16 is the CPU half type (AVX-512 BF16 / AMX run it natively; elsewhere torch emulates it),
fp16 the CUDA one. The weights are *stored* in the half type, so bytes on disk really halve.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

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

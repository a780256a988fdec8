"""Pick the runtime for a loaded artifact: torch eager or ONNX Runtime."""

from __future__ import annotations

from slimbench.compress.loader import LoadedModel
from slimbench.compress.onnx_model import OnnxModel


def make_runtime(loaded: LoadedModel, threads: int | None = None):
    if isinstance(loaded.model, OnnxModel):
        from slimbench.bench.runtimes.ort_runtime import OrtRuntime

        return OrtRuntime(loaded, threads)
    from slimbench.bench.runtimes.torch_runtime import TorchRuntime

    return TorchRuntime(loaded)

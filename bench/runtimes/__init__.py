"""Runtimes: a loaded artifact on a backend, behind the one ``CausalLM`` protocol.

``make_runtime`` picks the runtime by the loaded model's format, from ``RUNTIMES``:

    ``onnx``   an exported ``.onnx`` graph (``OnnxModel``)  -> ``OrtRuntime`` (ONNX Runtime)
    ``torch``  a Hugging Face torch model                   -> ``TorchRuntime`` (torch eager)

Adding a runtime is one module and one line: subclass ``RuntimeBase`` (base.py), which
declares every member of ``slimbench.tasks.protocol.CausalLM`` that a backend must write
(``forward`` with its KV cache, ``sync``, ``placement``, the two log-prob methods; greedy
generation comes from the base), with ``__init__(loaded, threads=None)``; then add its format
and class to ``RUNTIMES`` (and, for a new format, a case to ``model_format``).
``tests/test_runtime_protocol.py`` holds every registered runtime to the whole protocol.
"""

from __future__ import annotations

from slimbench.bench.runtimes.base import RuntimeBase
from slimbench.bench.runtimes.ort_runtime import OrtRuntime
from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.loader import LoadedModel
from slimbench.compress.onnx_model import OnnxModel
from slimbench.tasks.protocol import CausalLM

# model format -> the runtime class that runs it (built as cls(loaded, threads))
RUNTIMES: dict[str, type[RuntimeBase]] = {"onnx": OrtRuntime, "torch": TorchRuntime}


def model_format(loaded: LoadedModel) -> str:
    """The key of ``RUNTIMES`` for what ``load_artifact`` returned."""
    return "onnx" if isinstance(loaded.model, OnnxModel) else "torch"


def make_runtime(loaded: LoadedModel, threads: int | None = None) -> CausalLM:
    """The runtime for ``loaded``.

    Args:
        loaded: what ``load_artifact`` returned.
        threads: intra-op threads for a runtime that owns them (ORT's session); torch's are
            process-wide, set by ``environment.set_threads``.
    """
    return RUNTIMES[model_format(loaded)](loaded, threads)


__all__ = ["RUNTIMES", "CausalLM", "OrtRuntime", "RuntimeBase", "TorchRuntime", "make_runtime",
           "model_format"]

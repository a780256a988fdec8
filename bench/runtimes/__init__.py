"""Runtimes: a loaded artifact on a backend, behind the one ``CausalLM`` protocol.

``RUNTIMES`` is the backend registry (``slimbench ls backends``); ``make_runtime`` picks the
runtime for a loaded model by ``backend_of``:

    ``onnxruntime``  an exported ``.onnx`` graph (``OnnxModel``)  -> ``OrtRuntime``
    ``torch``        a Hugging Face torch model                   -> ``TorchRuntime`` (eager)
    ``openvino``     a stateful OpenVINO IR (``OvModel``)          -> ``OvRuntime``
    ``ctranslate2``  a CTranslate2 model (``Ct2Model``)             -> ``Ct2Runtime``
    ``genai``        an ONNX Runtime GenAI model (``GenaiModel``)   -> ``GenaiRuntime``

Entries are registered by module path, so listing them imports neither torch's nor ONNX
Runtime's runtime. Adding a runtime is one module and one registration: subclass
``RuntimeBase`` (base.py), which declares every member of ``slimbench.tasks.protocol.CausalLM``
that a backend must write (``forward`` with its KV cache, ``sync``, ``placement``, the two
log-prob methods; greedy generation comes from the base), with ``__init__(loaded,
threads=None)``; then ``RUNTIMES.add_lazy(backend, "module:Class", help)`` here or from a
plugin (``slimbench/registry.py``), and for a new artifact format a case to ``backend_of``.
``tests/test_runtime_protocol.py`` holds every built-in runtime to the whole protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimbench.registry import Registry

if TYPE_CHECKING:
    from slimbench.bench.runtimes.base import RuntimeBase
    from slimbench.compress.loader import LoadedModel
    from slimbench.tasks.protocol import CausalLM

# backend name -> the runtime class that runs it (built as cls(loaded, threads))
RUNTIMES: Registry[type[RuntimeBase]] = Registry("backend")
RUNTIMES.add_lazy("torch", "slimbench.bench.runtimes.torch_runtime:TorchRuntime",
                  "PyTorch eager on cpu or cuda (float32, float16, bfloat16)")
RUNTIMES.add_lazy("onnxruntime", "slimbench.bench.runtimes.ort_runtime:OrtRuntime",
                  "ONNX Runtime for ONNX artifacts (CPU EP; CUDA EP on cuda)")
RUNTIMES.add_lazy("openvino", "slimbench.bench.runtimes.ov_runtime:OvRuntime",
                  "OpenVINO for OpenVINO artifacts (CPU plugin; KV cache in the request's "
                  "state); needs slimbench[openvino]")
RUNTIMES.add_lazy("ctranslate2", "slimbench.bench.runtimes.ct2_runtime:Ct2Runtime",
                  "CTranslate2's Generator for CTranslate2 artifacts (KV cache inside the "
                  "generator); needs slimbench[ctranslate2]")
RUNTIMES.add_lazy("genai", "slimbench.bench.runtimes.genai_runtime:GenaiRuntime",
                  "ONNX Runtime GenAI's Generator for GenAI artifacts (KV cache inside the "
                  "generator); needs slimbench[genai]")


def backend_of(loaded: LoadedModel) -> str:
    """The ``RUNTIMES`` name that runs what ``load_artifact`` returned."""
    from slimbench.compress.ctranslate2_model import Ct2Model
    from slimbench.compress.genai_model import GenaiModel
    from slimbench.compress.onnx_model import OnnxModel
    from slimbench.compress.openvino_model import OvModel

    if isinstance(loaded.model, OvModel):
        return "openvino"
    if isinstance(loaded.model, Ct2Model):
        return "ctranslate2"
    if isinstance(loaded.model, GenaiModel):
        return "genai"
    return "onnxruntime" if isinstance(loaded.model, OnnxModel) else "torch"


def make_runtime(loaded: LoadedModel, threads: int | None = None,
                 backend: str | None = None) -> CausalLM:
    """The runtime for ``loaded``.

    Args:
        loaded: what ``load_artifact`` returned.
        threads: intra-op threads for a runtime that owns them (ORT's session); torch's are
            process-wide, set by ``environment.set_threads``.
        backend: a ``RUNTIMES`` name (a plugin's runtime); default: ``backend_of(loaded)``.

    Raises:
        UsageError: an unknown backend.
    """
    return RUNTIMES.get(backend or backend_of(loaded))(loaded, threads)


def __getattr__(name: str):
    """``OrtRuntime``, ``TorchRuntime``, ``RuntimeBase`` on first use (PEP 562): importing this
    package for its registry imports no backend."""
    if name in ("OrtRuntime", "TorchRuntime"):
        return RUNTIMES.get({"OrtRuntime": "onnxruntime", "TorchRuntime": "torch"}[name])
    if name == "RuntimeBase":
        from slimbench.bench.runtimes.base import RuntimeBase

        return RuntimeBase
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RUNTIMES", "OrtRuntime", "RuntimeBase", "TorchRuntime", "backend_of",
           "make_runtime"]

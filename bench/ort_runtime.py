"""ONNX Runtime backend: the ``CausalLM`` protocol over an exported merged KV-cache graph."""

from __future__ import annotations

import numpy as np

from slimbench.bench.runtime_base import RuntimeBase
from slimbench.compress.loader import LoadedModel
from slimbench.compress.onnx_export import io_names


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


class OrtRuntime(RuntimeBase):
    """Runs an ONNX artifact in an ORT session (one per runtime, threads fixed).

    Args:
        loaded: what ``load_artifact`` returned for an ONNX artifact.
        threads: ORT intra-op threads (None: ORT's default).
    """

    backend = "onnxruntime"

    def __init__(self, loaded: LoadedModel, threads: int | None = None) -> None:
        self.onnx = loaded.model
        self.info = loaded.info
        self.session = self.onnx.session(threads)
        cfg = self.onnx.config
        self.max_length = int(cfg.n_positions)
        self.vocab_size = int(cfg.vocab_size)
        self.input_names, self.output_names = io_names(cfg.n_layer)
        self.fallback_nodes = None  # filled by the harness when it profiles placement
        self._device = "cuda" if self.onnx.device.startswith("cuda") else "cpu"
        self._device_id = int(self.onnx.device.partition(":")[2] or 0)

    def _sync(self) -> None:  # session.run returns host arrays: already synchronous
        pass

    def forward(self, input_ids, past=None):
        """One graph run through IO binding; returns (logits as numpy, presents as OrtValues).

        Presents stay inside ORT and are bound as the next step's past, so the KV cache is not
        copied out to numpy and back on every token (the per-step overhead that makes simple
        ORT generate loops slow).
        """
        import onnxruntime as ort

        ids = np.ascontiguousarray(np.asarray(input_ids, dtype=np.int64))
        past = past if past is not None else self.onnx.empty_past(ids.shape[0])
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(
            ids, self._device, self._device_id))
        for name, value in zip(self.input_names[1:], past, strict=True):
            if isinstance(value, np.ndarray):
                value = ort.OrtValue.ortvalue_from_numpy(value, self._device, self._device_id)
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, self._device, self._device_id)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return outs[0].numpy(), outs[1:]

    def token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        ids, lengths = self._padded(batch)
        logits, _ = self.forward(ids)
        lp = log_softmax(logits[:, :-1])
        picked = np.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]
        return [picked[i, : n - 1] for i, n in enumerate(lengths)]

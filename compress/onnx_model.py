"""An ONNX artifact as loaded: the graph's path, its HF config, and a session factory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from slimbench.compress.arch import kv_shape, n_layers


@dataclasses.dataclass
class OnnxModel:
    """Args:
        path: the ``model.onnx`` file (external data, if any, beside it).
        config: the Hugging Face config of the model it was exported from.
        device: ``cpu`` or ``cuda[:N]``; selects the execution provider.
    """

    path: Path
    config: object
    device: str = "cpu"

    def providers(self) -> list:
        if self.device.startswith("cuda"):
            index = int(self.device.partition(":")[2] or 0)
            return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def session(self, threads: int | None = None):
        """A new InferenceSession with intra-op threads fixed (recorded by the caller)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only; -v does not need ORT's graph chatter
        return ort.InferenceSession(str(self.path), opts, providers=self.providers())

    def empty_past(self, batch: int, dtype=np.float32) -> list[np.ndarray]:
        """Past tensors of length 0 (KV heads under grouped-query attention), key and value
        per layer in the graph's input order."""
        shape = kv_shape(self.config, batch, 0)
        return [np.zeros(shape, dtype=dtype) for _ in range(2 * n_layers(self.config))]


def onnx_logits_fn(model: OnnxModel, session=None):
    """ids (B, T) -> logits (B, T, V) through the merged graph with an empty past."""
    session = session or model.session()

    def fn(ids: np.ndarray) -> np.ndarray:
        from slimbench.compress.onnx_export import io_names

        names = io_names(n_layers(model.config))[0]
        feeds = {"input_ids": np.asarray(ids, dtype=np.int64),
                 **dict(zip(names[1:], model.empty_past(len(ids)), strict=True))}
        return session.run(["logits"], feeds)[0]

    return fn


def onnx_op_counts(path: Path) -> dict:
    """Node count per op type (the quantization audit reads these)."""
    import collections

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(collections.Counter(n.op_type for n in graph.node).items()))

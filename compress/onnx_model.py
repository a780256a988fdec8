"""An ONNX artifact as loaded: the graph's path, its HF config, a session factory, and the one
place that builds a graph's feeds (``OnnxModel.feeds``).

Two graph interfaces exist (see ``compress/onnx_export.py``): graphs exported since version 2
of the export step take ``attention_mask``, ``position_ids`` and ``logits_index`` beside
``input_ids`` and the past; older artifacts take ``input_ids`` and the past only. ``feeds``
reads which inputs a graph declares and fills exactly those, so every caller works on both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slimbench.compress.arch import kv_shape, n_layers

MASK, POSITIONS, LOGITS_INDEX = "attention_mask", "position_ids", "logits_index"
# model metadata key: "fused" on graphs with GroupQueryAttention (compress/fused_attention.py)
ATTENTION_PROP = "slimbench.attention"
# logits_index [-1]: ONNX's Gather takes negative indices, so one constant selects the last
# position whatever the sequence length (a decode binding can keep it bound)
LAST_ONLY = np.array([-1], dtype=np.int64)
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                "tensor(int64)": np.int64}


def kv_names(layers: int) -> tuple[list[str], list[str]]:
    """(past inputs, present outputs): key and value per layer, in the graph's order."""
    past = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    return past, present


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """``(["input_ids", *past], ["logits", *present])``: the inputs every graph interface
    shares (the new interface adds ``CONTROL_INPUTS``). Build feeds with ``OnnxModel.feeds``
    rather than from these names: it fills the inputs a graph really declares."""
    past, present = kv_names(layers)
    return ["input_ids", *past], ["logits", *present]


def positions_from_mask(mask: np.ndarray, seq: int) -> np.ndarray:
    """Position ids (B, seq) of the last ``seq`` columns of a (B, past + seq) attention mask:
    each real token's index among its row's real tokens (pads get 0, or the position before
    them: they are masked out, so any value in range does)."""
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)[:, -seq:]


def positions_right(mask: np.ndarray, seq: int) -> np.ndarray:
    """Position ids (B, seq) of a chunk of ``seq`` tokens of RIGHT-padded rows (fused-attention
    graphs): row b holds ``n = mask[b].sum()`` real tokens at positions 0..n-1, and the chunk is
    its last ``min(n, seq)`` of them, starting at ``max(n - seq, 0)`` (0 for a padded prefill,
    n - 1 for a decode step's one token)."""
    start = np.maximum(np.asarray(mask).sum(-1) - seq, 0)
    return start[:, None] + np.arange(seq)[None, :]


def check_right_padded(mask: np.ndarray) -> None:
    """A fused-attention graph reads each row's length off the mask and attends to the first
    n positions: a row must be ones, then zeros."""
    mask = np.asarray(mask)
    lengths = mask.sum(-1)
    if not (mask == (np.arange(mask.shape[-1])[None, :] < lengths[:, None])).all():
        raise ValueError("this graph has fused attention: its rows must be right-padded (an "
                         "attention_mask row of ones, then zeros)")


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
    # {input name: numpy dtype}, read once from a session or the graph (see graph_inputs)
    _inputs: dict | None = dataclasses.field(default=None, init=False, repr=False,
                                             compare=False)
    _props: dict | None = dataclasses.field(default=None, init=False, repr=False,
                                            compare=False)
    _ops: set | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

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
        session = ort.InferenceSession(str(self.path), opts, providers=self.providers())
        self.remember_inputs(session)
        return session

    def remember_inputs(self, session) -> None:
        """Take the declared inputs from a session of this graph (saves reading the file)."""
        if self._inputs is None:
            self._inputs = {i.name: _NUMPY_TYPES.get(i.type) for i in session.get_inputs()}
        if self._props is None:
            self._props = dict(session.get_modelmeta().custom_metadata_map)

    def graph_inputs(self) -> dict[str, type | None]:
        """{input name: numpy dtype} the graph declares, in order. Read from a session when
        one was made, else from the graph file (without its external weights)."""
        if self._inputs is None:
            import onnx
            from onnx import helper

            proto = onnx.load(str(self.path), load_external_data=False)
            self._inputs = {i.name: helper.tensor_dtype_to_np_dtype(
                i.type.tensor_type.elem_type).type for i in proto.graph.input}
            self._props = {p.key: p.value for p in proto.metadata_props}
        return self._inputs

    def op_types(self) -> set[str]:
        """The graph's node op types (read once, without external weights)."""
        if self._ops is None:
            import onnx

            graph = onnx.load(str(self.path), load_external_data=False).graph
            self._ops = {n.op_type for n in graph.node}
        return self._ops

    @property
    def batch_invariant(self) -> bool:
        """False where activations are quantized on the fly with one scale per tensor
        (ORT dynamic int8: DynamicQuantizeLinear): a row's logits then depend on the other
        rows of its batch, so a batched generation may differ from one prompt at a time.
        Static int8 (fixed scales) and weight-only int4 (scales per row block) do not."""
        return "DynamicQuantizeLinear" not in self.op_types()

    @property
    def fused_attention(self) -> bool:
        """True for graphs exported with ``attention=fused``: right-padded rows, and the past
        and present of a layer may be one buffer (see ``compress/fused_attention.py``)."""
        self.graph_inputs()
        return self._props.get(ATTENTION_PROP) == "fused"

    @property
    def has_mask(self) -> bool:
        """True for graphs with attention-mask and position inputs (left-padded batches);
        False for artifacts exported before export_onnx version 2."""
        return MASK in self.graph_inputs()

    def past_dtype(self):
        return self.graph_inputs()[kv_names(n_layers(self.config))[0][0]]

    def empty_past(self, batch: int, dtype=None) -> list[np.ndarray]:
        """Past tensors of length 0 (KV heads under grouped-query attention), key and value
        per layer in the graph's input order; ``dtype`` defaults to the graph's."""
        shape = kv_shape(self.config, batch, 0)
        dtype = dtype or self.past_dtype()
        return [np.zeros(shape, dtype=dtype) for _ in range(2 * n_layers(self.config))]

    def control_feeds(self, input_ids, past_length: int = 0, attention_mask=None,
                      position_ids=None, last_only: bool = False) -> dict[str, np.ndarray]:
        """The feeds of every input but the past: ``input_ids`` and, where the graph declares
        them, ``attention_mask``, ``position_ids`` and ``logits_index``. Arguments as in
        ``feeds``; a runtime that binds its own past buffers uses this."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {ids.shape}")
        batch, seq = ids.shape
        total = past_length + seq
        if attention_mask is not None:
            attention_mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
            if attention_mask.shape != (batch, total):
                raise ValueError(f"attention_mask must be (batch, past + seq) = "
                                 f"{(batch, total)}, got {attention_mask.shape}")
        if position_ids is not None:
            position_ids = np.ascontiguousarray(position_ids, dtype=np.int64)
            if position_ids.shape != (batch, seq):
                raise ValueError(f"position_ids must be (batch, seq) = {(batch, seq)}, got "
                                 f"{position_ids.shape}")
        inputs = self.graph_inputs()
        if MASK not in inputs:
            # the old interface: positions follow the past length, no token is masked
            if attention_mask is not None and not attention_mask.all():
                raise ValueError(f"{self.path} was exported without an attention_mask input "
                                 "(before export_onnx version 2): it cannot mask padding; "
                                 "export it again")
            if position_ids is not None and not (
                    position_ids == np.arange(past_length, total)).all():
                raise ValueError(f"{self.path} has no position_ids input: positions follow "
                                 "the past length; export it again for other positions")
            return {"input_ids": ids}
        mask = np.ones((batch, total), np.int64) if attention_mask is None else attention_mask
        if self.fused_attention:
            check_right_padded(mask)
        if position_ids is None:
            position_ids = (positions_right if self.fused_attention
                            else positions_from_mask)(mask, seq)
        feeds = {"input_ids": ids, MASK: mask, POSITIONS: position_ids}
        if LOGITS_INDEX in inputs:
            feeds[LOGITS_INDEX] = LAST_ONLY if last_only else np.arange(seq, dtype=np.int64)
        return feeds

    def feeds(self, input_ids, past: Sequence[np.ndarray] | None = None, *,
              attention_mask=None, position_ids=None,
              last_only: bool = False) -> dict[str, np.ndarray]:
        """Feeds for ``session.run`` of this graph, for either graph interface.

        Args:
            input_ids: (B, T) token ids.
            past: the previous run's presents (``session.run(None, feeds)[1:]``: key and
                value per layer), or None for an empty past (prefill).
            attention_mask: (B, past + T), 1 for real tokens and 0 for pads; None: all ones.
                A graph of the old interface refuses a mask with zeros.
            position_ids: (B, T); None: from the mask (``positions_from_mask``), which for
                an all-ones mask is ``past .. past + T - 1``.
            last_only: logits for the last position only, (B, 1, V) (a graph of the old
                interface still returns all T).

        Returns:
            {input name: array} for exactly the inputs the graph declares.
        """
        batch = np.shape(input_ids)[0]
        past = self.empty_past(batch) if past is None else list(past)
        names = kv_names(n_layers(self.config))[0]
        if len(past) != len(names):
            raise ValueError(f"past needs {len(names)} tensors (key and value per layer), got "
                             f"{len(past)}")
        feeds = self.control_feeds(input_ids, past[0].shape[2], attention_mask, position_ids,
                                   last_only)
        return feeds | dict(zip(names, past, strict=True))


def onnx_logits_fn(model: OnnxModel, session=None):
    """ids (B, T) -> logits (B, T, V) through the merged graph with an empty past."""
    session = session or model.session()
    model.remember_inputs(session)

    def fn(ids: np.ndarray) -> np.ndarray:
        return session.run(["logits"], model.feeds(ids))[0]

    return fn


def onnx_op_counts(path: Path) -> dict[str, int]:
    """Node count per op type (the quantization audit reads these)."""
    import collections

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(collections.Counter(n.op_type for n in graph.node).items()))

"""An OpenVINO artifact: a stateful IR whose KV cache lives inside the infer request.

The IR is converted from slimbench's own ONNX export (``export_openvino``), so it takes the
same control inputs (``input_ids``, ``attention_mask``, ``position_ids``, ``logits_index``);
its past/present tensors became OpenVINO variables (``make_stateful``): each infer request
carries one sequence's cache and a call continues it. This is how OpenVINO recommends
running decoders (optimum-intel and OpenVINO GenAI export them so).

It is compiled to run in float32 with a float32 KV cache: OpenVINO's CPU plugin otherwise
computes in bf16 on AMX / AVX-512 BF16 CPUs and stores the cache as u8, which would measure
the CPU's precision choices instead of the artifact's weights (and break fp32 parity).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from slimbench.compress.onnx_model import LOGITS_INDEX, MASK, POSITIONS, positions_from_mask
from slimbench.extras import import_extra

OV_XML = "openvino_model.xml"
OV_BIN = "openvino_model.bin"
BEAM_IDX = "beam_idx"  # which cache row each row continues (export_openvino's make_stateful)
# compiled as the artifact is: float32 compute and cache (see the module docstring)
PROPERTIES = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
              "KV_CACHE_PRECISION": "f32"}


def import_openvino():
    """The ``openvino`` module, or one line naming the extra that installs it."""
    return import_extra("openvino", "openvino", "OpenVINO")


@dataclasses.dataclass
class OvModel:
    """Args:
        path: the ``openvino_model.xml`` file (its weights in the ``.bin`` beside it).
        config: the Hugging Face config of the model it was converted from.
    """

    path: Path
    config: object
    device: str = "cpu"

    def compile(self, threads: int | None = None, last_only: bool = False):
        """The IR compiled for OpenVINO's CPU plugin with ``threads`` inference threads;
        ``last_only``: its ``logits_index`` fixed to the last position (``last_position``)."""
        ov = import_openvino()
        core = ov.Core()
        props = dict(PROPERTIES)
        if threads:
            props["INFERENCE_NUM_THREADS"] = threads
        model = core.read_model(str(self.path))
        if last_only:
            last_position(model)
        return core.compile_model(model, "CPU", props)


def last_position(model) -> None:
    """Replace the ``logits_index`` input by the constant [-1] (in place): logits of the last
    position only. A generation step needs no more, and the constant lets OpenVINO infer the
    logits' shape once: decode steps run ~7% faster than with the index as an input (gpt2
    int8, 2 threads), level with OpenVINO GenAI's loop, which runs such a graph."""
    from openvino import opset13 as ops

    param = model.input(LOGITS_INDEX).get_node()
    last = ops.constant(np.array([-1], dtype=np.int64))
    for target in param.output(0).get_target_inputs():
        target.replace_source_output(last.output(0))
    model.remove_parameter(param)
    model.validate_nodes_and_infer_types()


def ov_feeds(ids: np.ndarray, past_length: int = 0, attention_mask=None, position_ids=None,
             last_only: bool | None = False) -> dict[str, np.ndarray]:
    """The control inputs of one call after ``past_length`` cached positions (the past itself
    is the request's state): a left-padded mask, positions counted from it. ``last_only``
    None: no ``logits_index`` (a graph compiled with it fixed)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {ids.shape}")
    batch, seq = ids.shape
    total = past_length + seq
    mask = (np.ones((batch, total), np.int64) if attention_mask is None
            else np.ascontiguousarray(attention_mask, dtype=np.int64))
    if mask.shape != (batch, total):
        raise ValueError(f"attention_mask must be (batch, past + seq) = {(batch, total)}, got "
                         f"{mask.shape}")
    positions = (positions_from_mask(mask, seq) if position_ids is None
                 else np.ascontiguousarray(position_ids, dtype=np.int64))
    if positions.shape != (batch, seq):
        raise ValueError(f"position_ids must be (batch, seq) = {(batch, seq)}, got "
                         f"{positions.shape}")
    feeds = {"input_ids": ids, MASK: mask, POSITIONS: positions,
             BEAM_IDX: np.arange(batch, dtype=np.int32)}
    if last_only is not None:
        feeds[LOGITS_INDEX] = np.array([-1] if last_only else np.arange(seq), dtype=np.int64)
    return feeds


def ov_logits_fn(model: OvModel, threads: int | None = None):
    """ids (B, T) -> logits (B, T, V) from an empty cache (parity checks)."""
    request = model.compile(threads).create_infer_request()

    def fn(ids: np.ndarray) -> np.ndarray:
        request.reset_state()
        return request.infer(ov_feeds(ids))["logits"].copy()

    return fn

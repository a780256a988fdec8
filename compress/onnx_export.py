"""ONNX export of a causal LM (any family of ``compress/arch.py``) as one merged graph with an
explicit KV cache.

Graph I/O (L layers, H KV heads, D head size; under grouped-query attention H is the number of
key/value heads, fewer than the query heads):
  inputs   input_ids (batch, seq) int64
           attention_mask (batch, past+seq) int64: 1 for real tokens, 0 for pads
           position_ids (batch, seq) int64
           logits_index (keep,) int64: the positions that get logits (negative counts from
               the end: [-1] is the last position, what generation needs)
           past_key_i, past_value_i (batch, H, past, D) float
  outputs  logits (batch, keep, vocab); present_key_i, present_value_i (batch, H, past+seq, D)
Prefill passes past tensors with past = 0; decode passes the previous presents. The mask and
positions let prompts of different lengths share a LEFT-padded batch (each row's next token in
the last column); ``logits_index`` is HF's ``logits_to_keep`` as an index tensor, a Gather
before lm_head, so generation projects one position onto the vocabulary instead of all of
them (~30% of a gpt2-size prefill's FLOPs over 128 positions).

With ``attention=fused`` (``fused_attention.py``) the interface is the same but for three
points: each layer's attention is one ORT GroupQueryAttention node, which may take its past
and present as ONE buffer of any capacity (it writes the new positions in place, so a decode
step copies no cache); rows are RIGHT-padded (a row's length is its mask's sum, and it attends
to its first n positions); and ``logits_index`` counts negative indices from each row's last
real token. The graph carries the metadata ``slimbench.attention = fused``.

Artifacts exported before version 2 of this step have no mask, position or index inputs
(positions follow the past length, logits for every position); ``OnnxModel.feeds`` and
``OrtRuntime`` read which inputs a graph declares and still run them, unbatched.

Exporter: transformers 5 returns a ``DynamicCache`` that the exporters cannot take as an input,
so ``_KVWrapper`` turns flat past tensors into a cache and the output cache back into tensors.
We use the TorchScript exporter (``dynamo=False``): it keeps ``dynamic_axes`` symbolic even
for a past length of 0, which lets one graph serve prefill and decode, whereas
``torch.export`` specialises 0-sized dimensions. Under tracing transformers always builds the
full 4-D mask from the 2-D one (it skips it only for concrete, unpadded inputs), and the
exporter's attention zeroes rows that are fully masked (a left pad's own query), so pads
produce no NaN that could reach the real tokens through the cache.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimbench.compress.arch import arch_of, kv_shape, n_layers
from slimbench.compress.conv1d import normalize_conv1d
from slimbench.compress.fused_attention import DOMAIN
from slimbench.compress.loader import LoadedModel, count_parameters
from slimbench.compress.manifest import StepReport
from slimbench.compress.onnx_model import (
    ATTENTION_PROP,
    LOGITS_INDEX,
    MASK,
    POSITIONS,
    OnnxModel,
    io_names,  # noqa: F401  (re-exported: callers' name)
    kv_names,
    onnx_logits_fn,
    onnx_op_counts,
    positions_from_mask,
    positions_right,
)
from slimbench.compress.parity import FP32_PARITY, parity, reference_prompts, torch_logits_fn
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError

ONNX_FILE = "model.onnx"
ATTENTION_KINDS = ("ops", "fused")
# Protobuf files cannot exceed 2 GB; above this size the weights go to external data.
EXTERNAL_DATA_BYTES = 1_500_000_000


@dataclasses.dataclass(frozen=True)
class ExportOnnxConfig:
    """Args:
        opset: ONNX opset to export with.
        attention: ``ops`` (attention as traced ONNX ops, a Concat-grown cache, left-padded
            batches; runs on every execution provider) or ``fused`` (one ORT
            GroupQueryAttention node per layer that updates a shared KV buffer in place,
            right-padded batches; see ``fused_attention.py``. ORT's CUDA kernel for it takes
            float16/bfloat16 only: cast a fused graph to fp16 for CUDA).
    """

    opset: int = 18
    attention: str = "ops"

    def __post_init__(self) -> None:
        if not 14 <= self.opset <= 21:
            raise UsageError(f"opset must be in [14, 21], got {self.opset}")
        if self.attention not in ATTENTION_KINDS:
            raise UsageError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got "
                             f"{self.attention!r}")


# the inputs before the past, in the graph's order (io_names: the names both interfaces share)
CONTROL_INPUTS = ("input_ids", MASK, POSITIONS, LOGITS_INDEX)


class _KVWrapper(nn.Module):
    """Tensor-only interface over an HF causal LM:
    (input_ids, attention_mask, position_ids, logits_index, *past) -> (logits, *present)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layers = n_layers(model.config)

    def forward(self, input_ids, attention_mask, position_ids, logits_index, *past):
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        # explicit positions: GPT-2 and the rotary families would count a left-padded row's
        # first token from the pads (OPT derives them from the mask, to the same values)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, logits_to_keep=logits_index, use_cache=True,
                         **{_cache_kw(self.model): DynamicCache(ddp_cache_data=pairs)})
        cache = getattr(out, _cache_kw(self.model))
        flat = []
        for layer in cache.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


class _FusedKVWrapper(_KVWrapper):
    """The same interface over fused attention (``fused_attention.py``): rows are
    right-padded, so the position that gets logits is found per row. ``logits_index`` counts
    from each row's last real token in this chunk when negative ([-1]: that token), from the
    chunk's start otherwise; a row's last real token is ``min(n, seq) - 1`` (n = its mask
    sum: a right-padded prefill ends at n - 1, a decode step's one token is at 0)."""

    def forward(self, input_ids, attention_mask, position_ids, logits_index, *past):
        from slimbench.compress.fused_attention import fused

        base = self.model.base_model
        with fused(self.model, past, attention_mask) as (cache, step):
            hidden = base(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=True,
                          **{_cache_kw(base): cache}).last_hidden_state
        seq = torch._shape_as_tensor(input_ids)[1]
        last = torch.minimum(attention_mask.sum(1), seq) - 1  # (B,)
        rows = torch.where(logits_index[None, :] < 0, last[:, None] + 1 + logits_index[None, :],
                           logits_index[None, :])  # (B, keep)
        picked = torch.gather(hidden, 1, rows[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = self.model.get_output_embeddings()(picked)
        flat = [t for layer in range(self.layers) for t in step.present[layer]]
        return (logits, *flat)


def _cache_kw(model: nn.Module) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else \
        "past_key_values"


def export_onnx(model: nn.Module, out_dir: Path, config: ExportOnnxConfig) -> Path:
    """Export ``model`` (float32, CPU) to ``out_dir/model.onnx``; returns the path.

    Conv1D layers are normalized to Linear first, so the projections appear as MatMul nodes
    with constant weights, the form ONNX Runtime's quantizers and fusions recognise.

    Tracing can leave state behind in the traced model (OPT's, for one, computes wrong logits
    afterwards): pass a copy and compare against the original.

    Raises:
        UsageError: a model of no family slimbench knows.
    """
    arch_of(model, "export_onnx")  # an unknown family fails here, before anything is written
    normalize_conv1d(model)
    cfg = model.config
    past_names, present_names = kv_names(n_layers(cfg))
    fused = config.attention == "fused"
    ids = torch.zeros(2, 3, dtype=torch.long)
    # a padded example (row 1 starts with a pad, or ends with one under fused attention), so
    # nothing specialises on an all-ones mask
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, -1 if fused else 0] = 0
    positions = torch.from_numpy(positions_from_mask(mask.numpy(), 3))
    index = torch.arange(3)
    past = [torch.zeros(kv_shape(cfg, 2, 4)) for _ in range(2 * n_layers(cfg))]
    axes = {"input_ids": {0: "batch", 1: "seq"}, MASK: {0: "batch", 1: "total"},
            POSITIONS: {0: "batch", 1: "seq"}, LOGITS_INDEX: {0: "keep"},
            "logits": {0: "batch", 1: "keep"}}
    axes |= {n: {0: "batch", 2: "past"} for n in past_names}
    # a fused graph's presents are its past buffers when they are shared, not past + seq long
    axes |= {n: {0: "batch", 2: "present" if fused else "total"} for n in present_names}
    path = out_dir / ONNX_FILE
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        wrapper = (_FusedKVWrapper if fused else _KVWrapper)(model).eval()
        torch.onnx.export(wrapper, (ids, mask, positions, index, *past),
                          str(path), input_names=[*CONTROL_INPUTS, *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes,
                          opset_version=config.opset, dynamo=False, do_constant_folding=True,
                          custom_opsets={DOMAIN: 1} if fused else None)
    import onnx
    from onnx import helper

    proto = onnx.load(str(path))
    if fused:  # how the runtime tells the two interfaces apart (padding side, shared buffers)
        helper.set_model_props(proto, {ATTENTION_PROP: "fused"})
    if _gemm_to_matmul(proto.graph) or big or fused:
        onnx.save_model(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                        location=ONNX_FILE + ".data")
    return path


def _gemm_to_matmul(graph) -> int:
    """Rewrite each ``Gemm(x, W, b)`` with a constant ``W`` as ``MatMul(x, W') + Add(b)`` in
    place; returns how many.

    The exporter emits Gemm for a Linear on 2-D input (OPT flattens the MLP's activations),
    but ONNX Runtime's static (QDQ) quantizer and calibrator and the int8 audit take MatMul
    only (the dynamic quantizer rewrites Gemm itself, unseen by the audit). Nodes are named
    after the Gemm's module path, so the audit still finds their block.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    nodes, replaced = [], set()
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        weight = node.input[1] + ".matmul"
        graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(w.T if attrs.get("transB", 0) else w), weight))
        replaced.add(node.input[1])
        stem = node.name.removesuffix("/Gemm")
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{stem}/MatMul_output_0" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product],
                                      name=f"{stem}/MatMul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]],
                                          name=f"{stem}/Add"))
    if replaced:
        used = {i for n in nodes for i in n.input}
        drop = [i for i in graph.initializer if i.name in replaced and i.name not in used]
        for init in drop:  # the Gemm-layout weights nothing reads any more
            graph.initializer.remove(init)
        del graph.node[:]
        graph.node.extend(nodes)
    return len(replaced)


def padded_drift(model: nn.Module, child: OnnxModel, session, prompts: np.ndarray) -> float:
    """Max |Δlogits| over the real tokens of a padded batch (row i loses 4i tokens to pads:
    its first ones, or its last under fused attention, whose rows are right-padded), graph
    vs ``model`` given the same mask and positions: the parity prompts alone never mask a
    token."""
    batch, width = prompts.shape
    fused = child.fused_attention
    mask = np.ones_like(prompts)
    for i in range(batch):
        pads = min(4 * i, width - 1)
        if fused:
            mask[i, width - pads:] = 0
        else:
            mask[i, :pads] = 0
    ids = prompts * mask
    positions = (positions_right if fused else positions_from_mask)(mask, width)
    got = session.run(["logits"], child.feeds(ids, attention_mask=mask,
                                              position_ids=positions))[0]
    with torch.inference_mode():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     position_ids=torch.from_numpy(positions)).logits.float().numpy()
    real = mask.astype(bool)
    return float(np.abs(got[real] - want[real]).max())


# version 2: attention_mask, position_ids and logits_index inputs (left-padded batches,
# last-position logits)
@register_step("export_onnx", ExportOnnxConfig, produces="onnx", version=2,
               help="ONNX export: one merged graph with explicit KV cache, attention mask and "
                    "position inputs, dynamic batch/sequence")
def _apply_export_onnx(parent: LoadedModel, config: ExportOnnxConfig, out: Path) -> StepReport:
    arch_of(parent.model, "export_onnx")
    if parent.info.device != "cpu" or parent.info.dtype != "float32":
        raise UsageError("export_onnx exports float32 models loaded on cpu")
    params, nonzero = count_parameters(parent.model)
    # a copy: tracing may mutate the model, and the parity reference below is the untouched one
    path = export_onnx(copy.deepcopy(parent.model), out, config)
    # config and tokenizer beside the graph: the loader rebuilds the model's shape from them
    parent.model.config.save_pretrained(out)
    if parent.tokenizer is not None:
        parent.tokenizer.save_pretrained(out)
    child = OnnxModel(path, parent.model.config)
    prompts = reference_prompts(parent.tokenizer, parent.model.config.vocab_size)
    session = child.session()
    checked = dataclasses.replace(
        parity(torch_logits_fn(parent.model), onnx_logits_fn(child, session), prompts),
        padded_max_abs_logit_diff=padded_drift(parent.model, child, session, prompts),
        target_max_abs_logit_diff=FP32_PARITY)
    ok = (max(checked.max_abs_logit_diff, checked.padded_max_abs_logit_diff) <= FP32_PARITY
          and checked.greedy_identical == checked.greedy_prompts)
    if not ok:
        raise CompressionError(f"ONNX export does not reproduce the torch model: "
                               f"{checked.to_dict()}")
    return StepReport(format="onnx", onnx_file=path.name, opset=config.opset,
                      attention=config.attention, parameters=params,
                      nonzero_parameters=nonzero, dtypes={"weights": "float32"},
                      graph=onnx_op_counts(path), parity=checked)

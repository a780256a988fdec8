"""PyTorch dynamic INT8 quantization of every transformer Linear, with a coverage audit.

Engine: ``torch.ao.quantization.quantize_dynamic`` (fbgemm/x86 int8 GEMMs with per-tensor
weight scales and dynamically quantized activations). torch.ao is deprecated in favour of
torchao but still ships in torch 2.13; it is used until a torchao variant is added and measured
against it. Its deprecation warnings are silenced here only.

The pitfall this module exists for: HF GPT-2 blocks use ``Conv1D``, so quantizing
``{nn.Linear}`` on a raw model touches only ``lm_head``. We normalize Conv1D -> Linear first
(``conv1d.normalize_conv1d``) and then *count* what was quantized in every block.

The artifact stores the int8 weights themselves (``torch_int8_store.py``) and loads without
the float ones; an artifact of version 2 stored the float weights and is quantized again at
load (``_quantize_on_load``), its coverage checked against its manifest either way.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import torch
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from slimbench.compress.arch import arch_of
from slimbench.compress.conv1d import normalize_conv1d
from slimbench.compress.int8_embeddings import quantize_embeddings
from slimbench.compress.loader import LoadedModel, count_parameters
from slimbench.compress.manifest import Manifest, StepReport
from slimbench.compress.parity import parity, reference_prompts, torch_logits_fn
from slimbench.compress.steps import register_step
from slimbench.compress.torch_int8_store import (
    int8_parameters,
    is_int8_folder,
    load_int8,
    save_int8,
)
from slimbench.errors import CompressionError, ModelLoadError, UsageError
from slimbench.schema.codec import Typed


@dataclasses.dataclass(frozen=True)
class TorchDynamicInt8Config:
    """Args:
        include_lm_head: quantize the output projection too (it is tied to the embedding in
            GPT-2; quantizing it costs more quality per byte than the blocks do).
        engine: torch quantized engine (``x86``, ``fbgemm``, ``onednn`` or ``qnnpack``).
        include_embeddings: quantize the token embedding and the output projection too, per
            row, one int8 matrix where they are tied (``int8_embeddings.py``): gpt2's artifact
            falls from 0.49x to 0.26x the fp32 file, at a small cost in quality.
    """

    include_lm_head: bool = False
    engine: str = "x86"
    include_embeddings: bool = False

    def __post_init__(self) -> None:
        engines = torch.backends.quantized.supported_engines
        if self.engine not in engines:
            raise UsageError(f"quantized engine {self.engine!r} is not available here; "
                             f"choose one of {', '.join(e for e in engines if e != 'none')}")


def quantize_dynamic_int8(model: nn.Module, config: TorchDynamicInt8Config) -> nn.Module:
    """Normalize Conv1D and quantize Linears (in place; returns the quantized model)."""
    torch.backends.quantized.engine = config.engine
    normalize_conv1d(model)
    head = output_projection_name(model)
    with_head = config.include_lm_head and not config.include_embeddings
    names = {name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)
             and (with_head or name != head)}
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        model = torch.ao.quantization.quantize_dynamic(
            model, {name: qconfig for name in names}, dtype=torch.qint8, inplace=True)
        if config.include_embeddings:
            quantize_embeddings(model)
    return model


def output_projection_name(model: nn.Module) -> str | None:
    """The module name of the output projection (``lm_head`` in every family known today)."""
    head = model.get_output_embeddings()
    return next((name for name, mod in model.named_modules() if mod is head), None)


@dataclasses.dataclass(frozen=True)
class TorchInt8Audit(Typed):
    """What dynamic int8 really quantized, counted from the modules present (the manifest's
    ``quantization``).

    Attributes:
        blocks: transformer blocks holding linear layers.
        block_linears: linear layers inside the blocks, int8 and float.
        block_linears_int8: those that are int8.
        expected_block_linears: what the family's description says the blocks hold (q, k, v,
            o and MLP projections per block, times blocks).
        per_block_int8: int8 linear layers per block index.
        lm_head: the output projection: int8, float or absent.
        int8_weight_bytes: bytes of the int8 weights (one per weight, a tied matrix once;
            scales are per tensor or per row).
        embeddings: the token embedding: int8 or float.
    """

    blocks: int
    block_linears: int
    block_linears_int8: int
    expected_block_linears: int
    per_block_int8: dict[str, int]
    lm_head: str
    int8_weight_bytes: int
    embeddings: str = "float"  # default: manifests written before it was counted


def audit_quantization(model: nn.Module) -> TorchInt8Audit:
    """Count quantized vs float linear layers per transformer block, from the modules present.

    Blocks are found through the family's description (``arch.py``), so a family whose block
    names the audit did not know shows up as a refusal, never as "0 of 0 quantized".
    Conv1D counts as a float linear layer: that is what a quantizer that missed it left behind.
    """
    from transformers.pytorch_utils import Conv1D

    arch = arch_of(model, "torch_dynamic_int8")
    block = arch.block_pattern
    head = output_projection_name(model) or "lm_head"
    per_block: dict[str, dict[str, int]] = {}
    lm_head = "absent"
    for name, mod in model.named_modules():
        quantized = isinstance(mod, nnqd.Linear)
        is_float = isinstance(mod, (nn.Linear, Conv1D)) and not quantized
        if not (quantized or is_float):
            continue
        if name == head:
            lm_head = "int8" if quantized else "float"
            continue
        m = block.search(name + ".")
        if m:
            slot = per_block.setdefault(m.group(1), {"int8": 0, "float": 0})
            slot["int8" if quantized else "float"] += 1
    q = sum(b["int8"] for b in per_block.values())
    total = q + sum(b["float"] for b in per_block.values())
    return TorchInt8Audit(
        blocks=len(per_block), block_linears=total, block_linears_int8=q,
        # what the family's description says each block holds (q, k, v, o, MLP)
        expected_block_linears=len(arch.linears()) * len(arch.block_list(model)),
        per_block_int8={k: v["int8"] for k, v in sorted(per_block.items(),
                                                         key=lambda kv: int(kv[0]))},
        lm_head=lm_head, int8_weight_bytes=int8_parameters(model, weights_only=True)[0],
        embeddings="int8" if isinstance(model.get_input_embeddings(), nnq.Embedding)
        else "float")


def require_full_coverage(audit: TorchInt8Audit) -> None:
    """Raise unless every linear layer of every block is quantized."""
    if audit.block_linears_int8 == 0:
        raise CompressionError(
            "dynamic int8 quantized nothing inside the transformer blocks "
            f"({audit.block_linears} float linear layers left; lm_head: {audit.lm_head})")
    expected = max(audit.block_linears, audit.expected_block_linears)
    if audit.block_linears_int8 < expected:
        raise CompressionError(
            f"dynamic int8 covered only {audit.block_linears_int8} of "
            f"{expected} block linear layers: {audit.per_block_int8}")


def _check_coverage(model: nn.Module, manifest: Manifest, what: str, where: str) -> None:
    """The int8 coverage of a loaded model against the manifest's audit.

    Raises:
        ModelLoadError: another coverage than the manifest recorded.
    """
    now = audit_quantization(model).to_dict()
    then = manifest.report.get("quantization") or {}  # JSON: manifests of every version
    keys = ("block_linears", "block_linears_int8", "lm_head", "embeddings")
    recorded = {k: then.get(k, "float" if k == "embeddings" else None) for k in keys}
    if any(now[k] != recorded[k] for k in keys):
        raise ModelLoadError(
            f"{where!r}: {what} gave {({k: now[k] for k in keys})}, but the manifest "
            f"recorded {recorded}")


def _quantize_on_load(loaded: LoadedModel, config: TorchDynamicInt8Config,
                      manifest: Manifest) -> LoadedModel:
    """The load transform of a version-2 artifact (float weights on disk): ``load_artifact``
    quantizes them again, and the coverage must be the recorded one."""
    loaded.model = quantize_dynamic_int8(loaded.model, config)
    _check_coverage(loaded.model, manifest, f"re-applying {manifest.load_transform}",
                    loaded.info.spec)
    return loaded


def _load_int8(path: Path, config: TorchDynamicInt8Config, manifest: Manifest):
    """The stored int8 model (``torch_int8_store.py``), its coverage checked against the
    manifest; None for a version-2 artifact, which stores float weights."""
    if not is_int8_folder(path):
        return None
    model = load_int8(path, config.engine)
    _check_coverage(model, manifest, "the stored int8 model", str(path))
    return model


# version 2: the audit counts blocks by family (arch.py) and holds them to their projections
# version 3: the int8 weights are stored (torch_int8_store.py), not quantized again at load
@register_step("torch_dynamic_int8", TorchDynamicInt8Config, produces="torch-int8", version=3,
               transform=_quantize_on_load, load=_load_int8,
               help="PyTorch dynamic INT8 of every block Linear (Conv1D normalized first)")
def _apply_torch_dynamic_int8(parent: LoadedModel, config: TorchDynamicInt8Config,
                              out: Path) -> StepReport:
    arch_of(parent.model, "torch_dynamic_int8")  # an unknown family: refused before any work
    params, nonzero = count_parameters(parent.model)
    quantized = quantize_dynamic_int8(copy.deepcopy(parent.model), config)
    audit = audit_quantization(quantized)
    require_full_coverage(audit)
    save_int8(quantized, out)
    if parent.tokenizer is not None:
        parent.tokenizer.save_pretrained(out)
    prompts = reference_prompts(parent.tokenizer, parent.model.config.vocab_size)
    return StepReport(
        format="hf", load_transform="torch_dynamic_int8", parameters=params,
        nonzero_parameters=nonzero,
        dtypes={"block_weights": "int8", "activations": "float32 (quantized per call)"}
        | ({"embeddings": "int8 (per row)"} if config.include_embeddings else {}),
        quantization=audit,
        parity=parity(torch_logits_fn(parent.model), torch_logits_fn(quantized), prompts))

"""Structured pruning with torch-pruning: attention heads, MLP channels and, where the config
forces it, residual width, for every decoder family of ``compress/arch.py``.

The result is a real, smaller model of the same family that ``from_pretrained`` reloads: its
config has fewer heads, a narrower MLP and, where the family derives the head size from the
width, a narrower residual stream. GPT-2, GPT-NeoX and OPT compute the head size as
``hidden / heads``: dropping whole heads while keeping the width is not representable in their
configs, so removing a share of the heads also removes the same share of residual channels
(hidden' = heads kept x head size). Llama-style configs (llama, mistral, qwen2) store
``head_dim``, so their heads go without touching the residual width.

torch-pruning traces the model (GPT-2's Conv1D normalized to Linear first) and owns the coupled
groups it understands: MLP channels (the up projections' outputs, gate included, with the down
projection's inputs) and the residual stream (embeddings, learned positions, every norm, every
projection's in/out side and the LM head). It cannot see heads (rows cut by ``view``), so heads
are removed by ``prune_heads``, which calls torch-pruning's own Linear pruners on each head's
rows and columns.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import torch
from torch import nn

from slimbench.compress import arch as archs
from slimbench.compress.calibration import parent_calibration
from slimbench.compress.conv1d import normalize_conv1d
from slimbench.compress.loader import LoadedModel, count_parameters, load_artifact
from slimbench.compress.manifest import StepReport
from slimbench.compress.parity import parity, reference_prompts, torch_logits_fn
from slimbench.compress.prune_heads import (
    HeadShape,
    group_scores,
    prune_groups,
    set_head_attrs,
)
from slimbench.compress.step_io import save_model
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.schema.codec import Typed

TARGETS = ("mlp", "attention", "both")
IMPORTANCE = ("magnitude", "taylor")
STEP = "prune_structured"


@dataclasses.dataclass(frozen=True)
class StructuredPruneConfig:
    """Args:
        ratio: share removed per layer, uniformly: of the MLP channels and/or of the KV head
            groups (with their query heads; where the family ties head size to width, of the
            residual width too).
        targets: ``mlp``, ``attention`` or ``both``.
        importance: ``magnitude`` (L2 of the group's weights) or ``taylor`` (|w * dL/dw|
            summed over the group, gradients from calibration text).
        calib_samples: calibration sequences for ``taylor`` (corpus train split).
        calib_seq_len: tokens per calibration sequence.
    """

    ratio: float = 0.3
    targets: str = "both"
    importance: str = "magnitude"
    calib_samples: int = 8
    calib_seq_len: int = 128

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise UsageError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.targets not in TARGETS:
            raise UsageError(f"targets must be one of {TARGETS}, got {self.targets!r}")
        if self.importance not in IMPORTANCE:
            raise UsageError(f"importance must be one of {IMPORTANCE}, got {self.importance!r}")
        if self.calib_samples < 1 or self.calib_seq_len < 2:
            raise UsageError("calib_samples must be >= 1 and calib_seq_len >= 2")


def _keep_count(n: int, ratio: float) -> int:
    return max(1, round(n * (1 - ratio)))


def _taylor_grads(model: nn.Module, batches: list) -> None:
    """Accumulate dL/dw of the LM loss over ``batches`` (Taylor importance reads .grad)."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for ids in batches:
            ids = torch.as_tensor(ids)
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()


def _graph(model: nn.Module):
    """torch-pruning's dependency graph of ``model``, traced on 8 tokens."""
    import torch_pruning as tp

    example = {"input_ids": torch.zeros(1, 8, dtype=torch.long), "use_cache": False}
    with warnings.catch_warnings():
        # Llama's RMSNorm weights are bare parameters: torch-pruning warns that it prunes
        # their last dimension, which is their only one (the residual channels): correct.
        warnings.filterwarnings("ignore", message=".*unwrapped.*")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _lowest(importance, group, n: int, keep: int) -> list[int]:
    """The ``n - keep`` channels of ``group``'s root with the lowest importance, sorted."""
    scores = importance(group)  # one score per channel of the group's root
    return sorted(torch.argsort(scores)[: n - keep].tolist())


def _mlp_groups(graph, importance, arch: archs.Arch, blocks: nn.ModuleList,
                keep: int) -> list:
    """Per block, the coupled group that cuts its MLP to ``keep`` channels: rooted at the
    first up projection's outputs, it holds the other up projection (Llama's gate) and the
    down projection's inputs."""
    import torch_pruning as tp

    plan = []
    for block in blocks:
        root = block.get_submodule(arch.mlp_in[0])
        inner = root.out_features
        full = graph.get_pruning_group(root, tp.prune_linear_out_channels,
                                       idxs=list(range(inner)))
        plan.append(graph.get_pruning_group(root, tp.prune_linear_out_channels,
                                            idxs=_lowest(importance, full, inner, keep)))
    return plan


def _width_group(graph, importance, model: nn.Module, width: int, keep: int):
    """The residual-stream group (embeddings, norms, every projection, LM head) cut to
    ``keep`` channels."""
    import torch_pruning as tp

    emb = model.get_input_embeddings()
    full = graph.get_pruning_group(emb, tp.prune_embedding_out_channels, idxs=list(range(width)))
    return graph.get_pruning_group(emb, tp.prune_embedding_out_channels,
                                   idxs=_lowest(importance, full, width, keep))


def _check_width_prunable(model: nn.Module, arch: archs.Arch, width: int) -> None:
    """Refuse a model whose token embeddings are not the residual stream (OPT-350m style
    ``project_in``/``project_out`` between them) when the residual width must shrink: the
    embedding-rooted group would cut the word-embedding side instead."""
    emb_dim = model.get_input_embeddings().weight.shape[1]
    if emb_dim != width:
        raise UsageError(
            f"{STEP}: this {arch.family} model's token embeddings are {emb_dim} wide but its "
            f"residual stream is {width} (word_embed_proj_dim != hidden_size, projected in and "
            "out); removing heads must narrow the residual stream, which slimbench cannot do "
            "through those projections; use targets=mlp")


def _set_config(model: nn.Module, arch: archs.Arch, shape: HeadShape, width: int,
                inner: int) -> None:
    """Write the pruned shapes into the config and the attributes derived from it."""
    cfg = model.config
    old_width = archs.hidden_size(cfg)
    cfg.num_attention_heads = shape.heads  # GPT-2's config maps this name onto n_head
    if hasattr(cfg, "num_key_value_heads"):
        cfg.num_key_value_heads = shape.kv_heads
    if not arch.head_dim_from_width:
        # explicit, else a config without head_dim (Qwen2's) derives hidden / heads anew
        cfg.head_dim = shape.head_dim
    cfg.hidden_size = width  # GPT-2: n_embd
    if getattr(cfg, "word_embed_proj_dim", None) == old_width:  # OPT: embeddings = residual
        cfg.word_embed_proj_dim = width
    setattr(cfg, arch.inner_key, inner)
    for block in arch.block_list(model):
        set_head_attrs(block, arch, shape)
    if getattr(cfg, "tie_word_embeddings", False):
        # both sides were cut alike but are separate tensors after pruning: tie them again
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


@dataclasses.dataclass(frozen=True)
class StructureAudit(Typed):
    """The shapes before and after structured pruning (the manifest's ``structure``); pairs are
    [before, after].

    Attributes:
        family: the model family (``arch.py``).
        targets: mlp, attention or both.
        importance: magnitude or taylor.
        requested_ratio: the share asked to be removed.
        heads: query heads per layer.
        kv_heads: key/value heads per layer.
        head_dim: the head size (unchanged).
        mlp_width: MLP channels per layer.
        hidden_size: residual width.
        realized_head_ratio: share of query heads removed.
        realized_mlp_ratio: share of MLP channels removed.
        realized_width_ratio: share of residual width removed.
        parameters: parameter count.
        parameter_ratio: parameters after over before.
        heads_dropped_per_layer: KV groups (with their query heads) removed, per layer;
            without grouped-query attention a group is one head.
    """

    family: str
    targets: str
    importance: str
    requested_ratio: float
    heads: list[int]
    kv_heads: list[int]
    head_dim: int
    mlp_width: list[int]
    hidden_size: list[int]
    realized_head_ratio: float
    realized_mlp_ratio: float
    realized_width_ratio: float
    parameters: list[int]
    parameter_ratio: float
    heads_dropped_per_layer: list[list[int]]


def prune_structured(model: nn.Module, config: StructuredPruneConfig,
                     calibration: list | None = None) -> StructureAudit:
    """Prune ``model`` (float32, CPU) in place and update its config; returns the audit.

    GPT-2's blocks are left as ``nn.Linear``; ``rebuild`` turns any pruned model back into a
    standard one of its family.

    Raises:
        UsageError: unknown family, taylor without calibration, an OPT with projected
            embeddings when heads (hence width) must go.
    """
    import torch_pruning as tp

    arch = archs.arch_of(model, STEP)
    shape, width = HeadShape.of(model.config), archs.hidden_size(model.config)
    blocks = arch.block_list(model)
    prune_mlp = config.targets in ("mlp", "both")
    prune_heads = config.targets in ("attention", "both")
    new_shape = shape.kept(_keep_count(shape.kv_heads, config.ratio) if prune_heads
                           else shape.kv_heads)
    # where the config derives head size from width, the width follows the heads kept
    new_width = new_shape.heads * shape.head_dim if arch.head_dim_from_width else width
    if new_width < width:
        _check_width_prunable(model, arch, width)
    before = sum(p.numel() for p in model.parameters())
    normalize_conv1d(model)
    inner = blocks[0].get_submodule(arch.mlp_in[0]).out_features
    new_inner = _keep_count(inner, config.ratio) if prune_mlp else inner
    taylor = config.importance == "taylor"
    if taylor:
        if not calibration:
            raise UsageError("taylor importance needs calibration batches")
        _taylor_grads(model, calibration)
    graph = _graph(model)
    imp = (tp.importance.GroupTaylorImportance() if taylor
           else tp.importance.GroupMagnitudeImportance(p=2))
    # importance is computed for every group before anything is cut
    plan = _mlp_groups(graph, imp, arch, blocks, new_inner) if prune_mlp else []
    drops = []
    if prune_heads:
        for block in blocks:
            scores = group_scores(block, arch, shape, taylor)
            drops.append(sorted(torch.argsort(scores)[: shape.kv_heads - new_shape.kv_heads]
                                .tolist()))
    if new_width < width:
        plan.append(_width_group(graph, imp, model, width, new_width))
    for group in plan:
        group.prune()
    for block, drop in zip(blocks, drops, strict=False):  # no drops: heads untouched
        if drop:  # a ratio too small to remove a whole KV group leaves the heads as they are
            prune_groups(block, arch, shape, drop)
    model.zero_grad(set_to_none=True)
    _set_config(model, arch, new_shape, new_width, new_inner)
    after = sum(p.numel() for p in model.parameters())
    return StructureAudit(
        family=arch.family, targets=config.targets, importance=config.importance,
        requested_ratio=config.ratio, heads=[shape.heads, new_shape.heads],
        kv_heads=[shape.kv_heads, new_shape.kv_heads], head_dim=shape.head_dim,
        mlp_width=[inner, new_inner], hidden_size=[width, new_width],
        realized_head_ratio=1 - new_shape.heads / shape.heads,
        realized_mlp_ratio=1 - new_inner / inner, realized_width_ratio=1 - new_width / width,
        parameters=[before, after], parameter_ratio=after / before,
        heads_dropped_per_layer=drops)


def rebuild(pruned: nn.Module) -> nn.Module:
    """A standard model of the pruned model's family, built from its config and weights.

    Building a fresh model from the updated config, rather than converting modules in place,
    proves the config alone describes the pruned shapes (what ``from_pretrained`` will need).
    GPT-2's Linear weights go back to Conv1D's (in, out) layout.
    """
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    fresh = AutoModelForCausalLM.from_config(pruned.config)
    fresh_modules = dict(fresh.named_modules())
    state = {}
    for name, tensor in pruned.state_dict().items():
        mod_name, _, leaf = name.rpartition(".")
        if leaf == "weight" and isinstance(fresh_modules.get(mod_name), Conv1D):
            tensor = tensor.t().contiguous()  # Linear (out, in) -> Conv1D (in, out)
        state[name] = tensor
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = {f"{n}.weight" for n, m in fresh.named_modules()
            if m is fresh.get_output_embeddings()}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"pruned weights do not fit the pruned config: missing {missing}, "
                           f"unexpected {unexpected}")
    fresh.tie_weights()
    return fresh.eval()



def _reload_check(out: Path, audit: StructureAudit) -> LoadedModel:
    """Load the saved child as a user would and check it has the pruned shapes."""
    reloaded = load_artifact(str(out))
    cfg = reloaded.model.config
    got = {"parameters": count_parameters(reloaded.model)[0], "heads": archs.n_heads(cfg),
           "kv_heads": archs.n_kv_heads(cfg), "mlp_width": archs.mlp_width(cfg),
           "hidden_size": archs.hidden_size(cfg)}
    want = {k: getattr(audit, k)[1] for k in got}  # audit fields are [before, after]
    if got != want:
        raise CompressionError(f"pruned checkpoint does not reload with the pruned shapes: "
                               f"{got} != {want}")
    return reloaded


# version 2: every family (arch.py); audit fields mlp_width, hidden_size, kv_heads
@register_step(STEP, StructuredPruneConfig, version=2,
               help="remove heads, MLP channels and width with torch-pruning: a smaller model "
                    "of the same family")
def _apply_prune_structured(parent: LoadedModel, config: StructuredPruneConfig,
                            out: Path) -> StepReport:
    archs.arch_of(parent.model, STEP)  # an unknown family fails before any copy or tracing
    work = copy.deepcopy(parent.model)
    batches = (parent_calibration(parent, config.calib_samples, config.calib_seq_len)
               if config.importance == "taylor" else None)
    audit = prune_structured(work, config, batches)
    model = rebuild(work)
    prompts = reference_prompts(parent.tokenizer, model.config.vocab_size)
    rebuilt = parity(torch_logits_fn(work), torch_logits_fn(model), prompts)
    if rebuilt.max_abs_logit_diff > 1e-5:
        raise CompressionError("pruned model changed when rebuilt from its config: "
                               f"{rebuilt.to_dict()}")
    save_model(model, parent.tokenizer, out)
    reloaded = _reload_check(out, audit)  # what a user gets back from disk, checked now
    params, nonzero = count_parameters(reloaded.model)
    return StepReport(
        format="hf", parameters=params, nonzero_parameters=nonzero,
        dtypes={"weights": "float32"}, structure=audit,
        parity=parity(torch_logits_fn(parent.model), torch_logits_fn(model), prompts))

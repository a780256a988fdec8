"""Structured pruning of GPT-2 with torch-pruning: attention heads, MLP channels, width.

The result is a real, smaller GPT-2 that ``from_pretrained`` reloads: its config has fewer
heads (``n_head``), a narrower MLP (``n_inner``) and, with heads removed, a narrower residual
stream (``n_embd``). The last is forced by Hugging Face's GPT-2, which derives the head size as
``n_embd // n_head`` and the attention width as ``n_embd``: dropping whole heads while keeping
``n_embd`` is not representable in its config, so removing a share of the heads also removes the
same share of residual channels (n_embd' = heads kept x head size).

torch-pruning traces the model (Conv1D normalized to Linear first) and owns the coupled groups
it understands: MLP channels (c_fc out -> c_proj in) and the residual stream (embeddings, every
LayerNorm, every projection's in/out side and lm_head). It cannot see that the fused qkv
projection is cut into heads by ``split`` + ``view``, so heads are pruned by a small custom
function that calls torch-pruning's own Linear pruners on the q/k/v rows of each removed head
and the matching c_proj columns.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn

from slimbench.compress.calibration import parent_calibration
from slimbench.compress.conv1d import normalize_conv1d
from slimbench.compress.loader import LoadedModel, count_parameters, load_artifact
from slimbench.compress.parity import parity, reference_prompts, torch_logits_fn
from slimbench.compress.step_io import save_model
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError

TARGETS = ("mlp", "attention", "both")
IMPORTANCE = ("magnitude", "taylor")


@dataclasses.dataclass(frozen=True)
class StructuredPruneConfig:
    """Args:
        ratio: share removed per layer, uniformly: of the MLP channels and/or of the heads
            (and with heads, of the residual width).
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


def _head_scores(attn: nn.Module, heads: int, head_dim: int, taylor: bool) -> torch.Tensor:
    """One score per head: its q/k/v rows of c_attn and its columns of c_proj."""
    def contrib(w: torch.Tensor) -> torch.Tensor:
        return (w * w.grad).abs() if taylor else w * w

    qkv = contrib(attn.c_attn.weight).detach()  # (3 * width, d_model)
    proj = contrib(attn.c_proj.weight).detach()  # (d_model, width)
    width = heads * head_dim
    per_head = qkv.reshape(3, heads, head_dim, -1).sum((0, 2, 3))
    per_head = per_head + proj.reshape(-1, heads, head_dim).sum((0, 2))
    assert qkv.shape[0] == 3 * width
    return per_head if taylor else per_head.sqrt()


def _prune_heads(attn: nn.Module, drop: list[int], heads: int, head_dim: int) -> None:
    """The custom pruning function: torch-pruning's Linear pruners on a head's channels."""
    import torch_pruning as tp

    width = heads * head_dim
    rows = [part * width + h * head_dim + j for part in range(3) for h in drop
            for j in range(head_dim)]
    cols = [h * head_dim + j for h in drop for j in range(head_dim)]
    tp.prune_linear_out_channels(attn.c_attn, rows)
    tp.prune_linear_in_channels(attn.c_proj, cols)


def _lowest(importance, group, n: int, keep: int) -> list[int]:
    """The ``n - keep`` channels of ``group``'s root with the lowest importance, sorted."""
    scores = importance(group)  # one score per channel of the group's root
    return sorted(torch.argsort(scores)[: n - keep].tolist())


def _mlp_groups(graph, importance, blocks: nn.ModuleList, keep: int) -> list:
    """Per block, the coupled group that cuts its MLP to ``keep`` channels (c_fc out ->
    c_proj in)."""
    import torch_pruning as tp

    inner = blocks[0].mlp.c_fc.out_features
    plan = []
    for block in blocks:
        full = graph.get_pruning_group(block.mlp.c_fc, tp.prune_linear_out_channels,
                                       idxs=list(range(inner)))
        plan.append(graph.get_pruning_group(block.mlp.c_fc, tp.prune_linear_out_channels,
                                            idxs=_lowest(importance, full, inner, keep)))
    return plan


def _width_group(graph, importance, model: nn.Module, keep: int):
    """The residual-stream group (embeddings, LayerNorms, every projection, lm_head) cut to
    ``keep`` channels."""
    import torch_pruning as tp

    wte, width = model.transformer.wte, model.config.n_embd
    full = graph.get_pruning_group(wte, tp.prune_embedding_out_channels, idxs=list(range(width)))
    return graph.get_pruning_group(wte, tp.prune_embedding_out_channels,
                                   idxs=_lowest(importance, full, width, keep))


def _set_shapes(model: nn.Module, heads: int, head_dim: int, inner: int) -> None:
    """Write the pruned shapes into the config and the attributes derived from it."""
    cfg, width = model.config, heads * head_dim
    cfg.n_embd, cfg.n_head, cfg.n_inner = width, heads, inner
    for block in model.transformer.h:  # attributes GPT2Attention derived from the old config
        block.attn.embed_dim = block.attn.split_size = width
        block.attn.num_heads = heads
    if getattr(cfg, "tie_word_embeddings", True):
        model.lm_head.weight = model.transformer.wte.weight  # both were cut alike; re-tie


def prune_structured(model: nn.Module, config: StructuredPruneConfig,
                     calibration: list | None = None) -> dict:
    """Prune ``model`` (float32, CPU) in place and update its config; returns the audit.

    The model's blocks are left as ``nn.Linear``; ``to_gpt2`` turns it back into a standard
    GPT-2 for saving.
    """
    import torch_pruning as tp

    cfg = model.config
    before = sum(p.numel() for p in model.parameters())
    normalize_conv1d(model)
    blocks = model.transformer.h
    heads, head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
    inner = blocks[0].mlp.c_fc.out_features
    taylor = config.importance == "taylor"
    if taylor:
        if not calibration:
            raise UsageError("taylor importance needs calibration batches")
        _taylor_grads(model, calibration)
    example = {"input_ids": torch.zeros(1, 8, dtype=torch.long), "use_cache": False}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    imp = (tp.importance.GroupTaylorImportance() if taylor
           else tp.importance.GroupMagnitudeImportance(p=2))
    prune_mlp = config.targets in ("mlp", "both")
    prune_heads = config.targets in ("attention", "both")
    new_inner = _keep_count(inner, config.ratio) if prune_mlp else inner
    new_heads = _keep_count(heads, config.ratio) if prune_heads else heads
    # importance is computed for every group before anything is cut
    plan = _mlp_groups(graph, imp, blocks, new_inner) if prune_mlp else []
    drops = []
    if prune_heads:
        for block in blocks:
            scores = _head_scores(block.attn, heads, head_dim, taylor)
            drops.append(sorted(torch.argsort(scores)[: heads - new_heads].tolist()))
        plan.append(_width_group(graph, imp, model, new_heads * head_dim))
    for group in plan:
        group.prune()
    for block, drop in zip(blocks, drops or [[]] * len(blocks), strict=True):
        if drop:
            _prune_heads(block.attn, drop, heads, head_dim)
    model.zero_grad(set_to_none=True)
    _set_shapes(model, new_heads, head_dim, new_inner)
    after = sum(p.numel() for p in model.parameters())
    return {"targets": config.targets, "importance": config.importance,
            "requested_ratio": config.ratio,
            "heads": [heads, new_heads], "n_inner": [inner, new_inner],
            "n_embd": [heads * head_dim, new_heads * head_dim],
            "realized_head_ratio": 1 - new_heads / heads,
            "realized_mlp_ratio": 1 - new_inner / inner,
            "parameters": [before, after], "parameter_ratio": after / before,
            "heads_dropped_per_layer": drops}


def to_gpt2(pruned: nn.Module) -> nn.Module:
    """A standard GPT-2 (Conv1D blocks) built from the pruned model's config and weights.

    Building a fresh model from the updated config, rather than converting modules in place,
    proves the config alone describes the pruned shapes (what ``from_pretrained`` will need).
    """
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_config(pruned.config)
    state = {}
    for name, tensor in pruned.state_dict().items():
        mod_name = name.rpartition(".")[0]
        mod = pruned.get_submodule(mod_name)
        if (isinstance(mod, nn.Linear) and name.endswith(".weight")
                and not mod_name.endswith("lm_head")):
            tensor = tensor.t().contiguous()  # Linear (out, in) -> Conv1D (in, out)
        state[name] = tensor
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise RuntimeError(f"pruned weights do not fit the pruned config: missing {missing}, "
                           f"unexpected {unexpected}")
    fresh.tie_weights()
    return fresh.eval()


@register_step("prune_structured", StructuredPruneConfig,
               help="remove heads, MLP channels and width with torch-pruning: a smaller GPT-2")
def _apply_prune_structured(parent: LoadedModel, config: StructuredPruneConfig,
                            out: Path) -> dict:
    if parent.model.config.model_type != "gpt2":
        raise UsageError("prune_structured knows GPT-2's layout; got model type "
                         f"{parent.model.config.model_type!r}")
    work = copy.deepcopy(parent.model)
    batches = (parent_calibration(parent, config.calib_samples, config.calib_seq_len)
               if config.importance == "taylor" else None)
    audit = prune_structured(work, config, batches)
    model = to_gpt2(work)
    prompts = reference_prompts(parent.tokenizer, model.config.vocab_size)
    rebuilt = parity(torch_logits_fn(work), torch_logits_fn(model), prompts)
    if rebuilt["max_abs_logit_diff"] > 1e-5:
        raise CompressionError(f"pruned model changed when rebuilt from its config: {rebuilt}")
    save_model(model, parent.tokenizer, out)
    reloaded = load_artifact(str(out))  # what a user gets back from disk, checked now
    params, nonzero = count_parameters(reloaded.model)
    if params != audit["parameters"][1] or reloaded.model.config.n_inner != audit["n_inner"][1]:
        raise CompressionError("pruned checkpoint does not reload with the pruned shapes")
    return {"format": "hf", "parameters": params, "nonzero_parameters": nonzero,
            "dtypes": {"weights": "float32"}, "structure": audit,
            "parity": parity(torch_logits_fn(parent.model), torch_logits_fn(model), prompts)}

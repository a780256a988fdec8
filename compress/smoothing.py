"""Per-input-channel scales folded exactly into a torch model: what SmoothQuant and AWQ share.

A *smoothable group* is a producer and the linears that read its output (and only them).
Scaling input channel j of every consumer by s_j (W[:, j] *= s_j) and dividing the producer's
channel j by s_j leaves the function unchanged in exact arithmetic; in float32 the logits move
by rounding only (``FP32_PARITY``, proven by each step). A later quantizer then sees the scaled
weights (W s) and activations (X / s).

Groups per block (family layouts from ``arch.py``; norms named in ``NORMS``):

- pre-attention norm -> q/k/v (GPT-2 ``ln_1`` -> ``attn.c_attn``, a Conv1D stored (in, out));
- pre-MLP norm -> the MLP's input linears (``ln_2`` -> ``c_fc``; gate, up; fc1; h_to_4h);
- v projection -> attention output projection: attention mixes V's channels only within a
  channel (softmax(QK^T) V), so V's channel j reaches the output projection's input j. Only
  when every query head has its own KV head (as AutoAWQ): under grouped-query attention one
  V channel feeds several input channels, whose scales would have to be tied;
- Llama ``up_proj`` -> ``down_proj``: down(act(gate) * up) is linear in up's output;
- OPT ``fc1`` -> ``fc2`` through ReLU, which is positively homogeneous (relu(x/s) = relu(x)/s
  for s > 0).

- the final norm -> ``lm_head`` (kind ``head``, asked for separately): only once the
  ``lm_head`` is untied from the token embedding (``untie_lm_head``), since scaling a tied
  head would scale the embedding. The ONNX export stores the two as separate tensors anyway,
  so untying costs nothing in the exported graph (the torch artifact grows by vocab x hidden).

Not foldable, skipped and said so in ``skipped``: GPT-2's and GPT-NeoX's ``fc -> proj``
through GELU (gelu(x/s) != gelu(x)/s); a tied ``lm_head``; a post-LN OPT's norms (its norm
output also feeds the residual stream) and OPT's final norm when a ``project_out`` follows it.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from slimbench.compress.arch import arch_of, head_dim, n_heads, n_kv_heads
from slimbench.compress.loader import LoadedModel, count_parameters
from slimbench.compress.manifest import Parity, Record, StepReport
from slimbench.compress.parity import FP32_PARITY, parity, reference_prompts, torch_logits_fn
from slimbench.compress.step_io import save_model
from slimbench.errors import CompressionError, UsageError
from slimbench.schema.codec import Typed

# {family: ((block-relative norm, "qkv" | "mlp_in": the Arch field naming its consumers), ...)}
NORMS = {
    "gpt2": (("ln_1", "qkv"), ("ln_2", "mlp_in")),
    "llama": (("input_layernorm", "qkv"), ("post_attention_layernorm", "mlp_in")),
    "gpt_neox": (("input_layernorm", "qkv"), ("post_attention_layernorm", "mlp_in")),
    "opt": (("self_attn_layer_norm", "qkv"), ("final_layer_norm", "mlp_in")),
}
FINAL_NORMS = {"gpt2": "transformer.ln_f", "llama": "model.norm",
               "gpt_neox": "gpt_neox.final_layer_norm", "opt": "model.decoder.final_layer_norm"}
MIN_SCALE = 1e-5  # SmoothQuant's clamp: a scale never reaches zero


def out_in(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in); Conv1D stores (in, out), so its transpose (a view: writes
    through it reach the module)."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


@dataclasses.dataclass(frozen=True)
class Group:
    """A producer and the linears sharing its output as their input.

    Attributes:
        name: ``<block path>: <producer> -> <consumers>``, for audits.
        kind: ``norm`` (a LayerNorm/RMSNorm producer), ``linear``, or ``head`` (the final
            norm -> ``lm_head``).
        producer: the module whose output channels are divided by s.
        consumers: the linears whose input channels are multiplied by s.
        rows: a linear producer's output channels that feed the consumers, in the consumers'
            input order (None: every channel of a norm).
    """

    name: str
    kind: str
    producer: nn.Module
    consumers: tuple[nn.Module, ...]
    rows: torch.Tensor | None = None

    @property
    def channels(self) -> int:
        return out_in(self.consumers[0]).shape[1]


def smoothable_groups(model: nn.Module, kinds: tuple[str, ...] = ("norm", "linear"),
                      step: str | None = None) -> tuple[list[Group], list[str]]:
    """The model's groups (block by block, in forward order) and what was skipped, and why.

    Raises:
        UsageError: a family without a norm layout here (a plugin family).
    """
    arch, cfg = arch_of(model, step), model.config
    if arch.family not in NORMS:
        raise UsageError(f"{step or 'smoothing'}: no norm layout for family {arch.family!r} "
                         f"(known: {', '.join(NORMS)})")
    post_ln = arch.family == "opt" and not getattr(cfg, "do_layer_norm_before", True)
    groups, skipped = [], []
    for i, block in enumerate(arch.block_list(model)):
        at = f"{arch.blocks}.{i}"
        for norm, field in NORMS[arch.family]:
            mod = block.get_submodule(norm)
            if "norm" in kinds and not post_ln and getattr(mod, "weight", None) is not None:
                names = getattr(arch, field)
                groups.append(Group(f"{at}: {norm} -> {', '.join(names)}", "norm", mod,
                                    tuple(block.get_submodule(n) for n in names)))
            if field == "qkv" and "linear" in kinds:
                groups += _v_to_out(block, arch, cfg, at, skipped)
            if field == "mlp_in" and "linear" in kinds:
                groups += _mlp_pair(block, arch, cfg, at, skipped)
        if post_ln and "norm" in kinds:
            skipped.append(f"{at}: post-LN norms (their output also feeds the residual)")
    if "head" in kinds:
        groups += _head(model, arch, post_ln, skipped)
    return groups, skipped


def _head(model, arch, post_ln: bool, skipped: list[str]) -> list[Group]:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    norm = model.get_submodule(FINAL_NORMS[arch.family])
    why = ("tied to the token embedding (untie_lm_head first)" if head.weight is emb.weight
           else "a projection follows the norm" if getattr(
               getattr(model, "model", None), "decoder", None) is not None
           and getattr(model.model.decoder, "project_out", None) is not None
           else "post-LN" if post_ln or getattr(norm, "weight", None) is None else None)
    if why:
        skipped.append(f"{FINAL_NORMS[arch.family]} -> lm_head ({why})")
        return []
    return [Group(f"{FINAL_NORMS[arch.family]} -> lm_head", "head", norm, (head,))]


def untie_lm_head(model: nn.Module) -> bool:
    """Give ``lm_head`` its own copy of a tied embedding (and say so in the config, so the
    saved child loads untied); returns whether it was tied."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not emb.weight:
        return False
    head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return True


def _v_to_out(block, arch, cfg, at: str, skipped: list[str]) -> list[Group]:
    out = block.get_submodule(arch.out_proj)
    if n_kv_heads(cfg) != n_heads(cfg):
        skipped.append(f"{at}: v -> {arch.out_proj} (grouped-query attention: a V channel "
                       "feeds several output-projection inputs)")
        return []
    heads, hd = n_heads(cfg), head_dim(cfg)
    if arch.qkv_layout == "separate":
        v, rows = block.get_submodule(arch.qkv[-1]), None
    elif arch.qkv_layout == "stacked":  # [q heads | k heads | v heads]
        v, rows = block.get_submodule(arch.qkv[0]), torch.arange(2 * heads * hd, 3 * heads * hd)
    else:  # interleaved per head [q | k | v]: v of head h, dim d is row h * 3hd + 2hd + d
        v = block.get_submodule(arch.qkv[0])
        rows = (torch.arange(heads)[:, None] * 3 * hd + 2 * hd + torch.arange(hd)).flatten()
    if rows is None:
        rows = torch.arange(out_in(v).shape[0])
    return [Group(f"{at}: v -> {arch.out_proj}", "linear", v, (out,), rows)]


def _mlp_pair(block, arch, cfg, at: str, skipped: list[str]) -> list[Group]:
    down = block.get_submodule(arch.mlp_out)
    if arch.family == "llama":  # down(act(gate) * up): linear in up's output
        up = block.get_submodule(arch.mlp_in[-1])
        return [Group(f"{at}: {arch.mlp_in[-1]} -> {arch.mlp_out}", "linear", up, (down,),
                      torch.arange(out_in(up).shape[0]))]
    act = getattr(cfg, "activation_function", None) or getattr(cfg, "hidden_act", None)
    if arch.family == "opt" and act == "relu":  # relu(x / s) = relu(x) / s for s > 0
        fc1 = block.get_submodule(arch.mlp_in[0])
        return [Group(f"{at}: {arch.mlp_in[0]} -> {arch.mlp_out}", "linear", fc1, (down,),
                      torch.arange(out_in(fc1).shape[0]))]
    skipped.append(f"{at}: {arch.mlp_in[0]} -> {arch.mlp_out} ({act} is not positively "
                   "homogeneous: a scale cannot pass through it)")
    return []


@torch.no_grad()
def fold(group: Group, s: torch.Tensor) -> None:
    """Multiply the consumers' input channels by ``s`` and divide the producer's by it, in
    place (exact up to float rounding).

    Raises:
        ValueError: ``s`` of the wrong length, or not finite and positive (a ReLU producer
            needs s > 0; a zero would lose the channel).
    """
    s = s.detach().to(torch.float32).flatten()
    if s.numel() != group.channels or not bool(torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"{group.name}: scales must be {group.channels} finite positive "
                         f"numbers")
    for c in group.consumers:
        out_in(c).mul_(s.to(c.weight.dtype)[None, :])  # (out, in) * (1, in)
    p, s = group.producer, s.to(group.producer.weight.dtype)
    if group.rows is None:  # a norm: y = norm(x) * w + b, every channel
        p.weight.div_(s)
        if getattr(p, "bias", None) is not None:
            p.bias.div_(s)
        return
    w = out_in(p)
    w[group.rows] = w[group.rows] / s[:, None]  # index_put on the view reaches the module
    if p.bias is not None:
        p.bias[group.rows] = p.bias[group.rows] / s


def folded_weight(module: nn.Module, plan: list[tuple[Group, torch.Tensor]]) -> torch.Tensor:
    """``module``'s (out, in) weight as ``fold`` would leave it after every (group, s) of
    ``plan``, computed out of place (the SmoothQuant search scores candidates this way)."""
    w = out_in(module).detach().float().clone()
    for group, s in plan:
        if any(c is module for c in group.consumers):
            w *= s[None, :]
        if group.rows is not None and group.producer is module:
            w[group.rows] /= s[:, None]
    return w


@dataclasses.dataclass
class InputStats:
    """One group's input over the calibration tokens.

    Attributes:
        absmax: max |X_j| per input channel (in,).
        absmean: mean |X_j| per input channel (in,).
        sample: up to ``keep_tokens`` rows of X, spread over the batches (tokens, in).
    """

    absmax: torch.Tensor
    absmean: torch.Tensor
    sample: torch.Tensor


@torch.no_grad()
def input_stats(model: nn.Module, groups: list[Group], batches: list,
                keep_tokens: int = 4096) -> list[InputStats]:
    """Per-channel statistics of each group's input (a forward pre-hook on its first
    consumer; the others read the same tensor), from one pass over ``batches``."""
    per_batch = max(1, math.ceil(keep_tokens / max(1, len(batches))))
    acc = [{"max": None, "sum": None, "n": 0, "rows": []} for _ in groups]
    hooks = []
    for a, g in zip(acc, groups, strict=True):
        def hook(_m, args, a=a):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, in)
            m, s = x.abs().amax(0), x.abs().sum(0)
            a["max"] = m if a["max"] is None else torch.maximum(a["max"], m)
            a["sum"] = s if a["sum"] is None else a["sum"] + s
            a["n"] += x.shape[0]
            idx = torch.linspace(0, x.shape[0] - 1, min(per_batch, x.shape[0])).long()
            a["rows"].append(x[idx])
        hooks.append(g.consumers[0].register_forward_pre_hook(hook))
    try:
        for ids in batches:
            model(input_ids=torch.as_tensor(ids), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return [InputStats(a["max"], a["sum"] / a["n"], torch.cat(a["rows"])[:keep_tokens])
            for a in acc]


def outlier_ratio(absmax: torch.Tensor) -> float:
    """max over channels of max|X_j| / their median: how far the worst channel stands out
    (what a per-tensor activation scale has to cover)."""
    return float(absmax.max() / absmax.median().clamp_min(1e-12))


@dataclasses.dataclass(frozen=True)
class SmoothingCalibration(Typed):
    """The data a smoothing step took its statistics from.

    Attributes:
        samples: calibration sequences used.
        seq_len: tokens per sequence (capped at the model's positions).
        tokens_searched: activation rows kept per group for the search.
        source: where the sequences came from.
    """

    samples: int
    seq_len: int
    tokens_searched: int
    source: str


def require_fp32(model: nn.Module, step: str) -> None:
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise UsageError(f"{step}: folds scales exactly in float32; the parent's weights are "
                         f"{', '.join(sorted(str(d) for d in dtypes))} (apply {step} before "
                         "a cast)")


def smoothed_child(parent: LoadedModel, model: nn.Module, out, audit: Record,
                   weights: str) -> StepReport:
    """Prove the folded fp32 ``model`` equals its parent, write it and report it.

    Raises:
        CompressionError: the logits moved by more than float32 rounding allows.
    """
    prompts = reference_prompts(parent.tokenizer, model.config.vocab_size)
    proof: Parity = parity(torch_logits_fn(parent.model), torch_logits_fn(model), prompts)
    if proof.max_abs_logit_diff > FP32_PARITY:
        raise CompressionError(f"the folded scales changed the logits by "
                               f"{proof.max_abs_logit_diff:.2e} > {FP32_PARITY:g}: the fold "
                               "is not exact for this model")
    save_model(model, parent.tokenizer, out)
    params, nonzero = count_parameters(model)
    return StepReport(format="hf", parameters=params, nonzero_parameters=nonzero,
                      dtypes={"weights": weights}, quantization=audit, parity=proof)

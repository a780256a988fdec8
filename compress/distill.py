"""Teacher -> student distillation on the embedded corpus (train split).

Loss per token: ``alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE``
plus, optionally, ``hidden_weight * (1 - cos(h_s, h_t))`` on the last hidden states (same
width only). ``alpha = 0`` is plain language-model training of the same student: the control
that tells whether the teacher helped.

The student is either the parent artifact (e.g. a pruned model, for recovery) or, with
``student_layers``, a shallower copy of the parent whose layers are initialised from evenly
spaced parent layers (DistilBERT-style). The loop is written here rather than with HF
``Trainer``: it needs a second model's logits inside the loss, a NaN stop, and a resumable
checkpoint that holds the data sampler's state; AdamW, the schedule and clipping are torch's
and transformers' own.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from slimbench import atomic
from slimbench.compress.arch import arch_of, hidden_size, n_layers
from slimbench.compress.loader import LoadedModel, count_parameters, load_artifact
from slimbench.compress.manifest import StepReport
from slimbench.compress.onnx_model import OnnxModel
from slimbench.compress.parity import parity, reference_prompts, torch_logits_fn
from slimbench.compress.step_io import save_model
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.log import quiet_progress
from slimbench.schema.codec import Typed

log = logging.getLogger(__name__)
CHECKPOINT_STATE = "trainer.json"


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Args:
        teacher: model spec of the teacher (default: the recipe's input model, or the parent
            when ``student_layers`` builds a new student from it).
        student_layers: build a student with this many layers from the parent's.
        steps: optimizer steps.
        batch_size: sequences per step.
        seq_len: tokens per sequence.
        lr: peak AdamW learning rate.
        warmup: linear warmup steps before the cosine decay.
        weight_decay: AdamW weight decay.
        alpha: weight of the distillation term (0 = train on the corpus alone).
        temperature: softmax temperature of the distillation term.
        hidden_weight: weight of the last-hidden-state cosine term (0 = off).
        grad_clip: max gradient norm.
        seed: seeds the data order and dropout.
        eval_every: steps between validation perplexities (0 = only at the end).
        eval_batches: validation sequences (corpus validation split; monitoring only, no
            model selection).
        checkpoint_dir: where to save resumable state (resumes if it holds a checkpoint).
        checkpoint_every: steps between checkpoints.
        device: ``cpu`` or ``cuda[:N]``.
    """

    teacher: str | None = None
    student_layers: int | None = None
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.01
    alpha: float = 0.5
    temperature: float = 2.0
    hidden_weight: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    eval_batches: int = 16
    checkpoint_dir: str | None = None
    checkpoint_every: int = 100
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.seq_len >= 2, f"seq_len must be >= 2, got {self.seq_len}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.warmup < self.steps, f"warmup must be in [0, steps), got {self.warmup}"),
            (0 <= self.alpha <= 1, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.hidden_weight >= 0, f"hidden_weight must be >= 0, got {self.hidden_weight}"),
            (self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip}"),
            (self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"),
            (self.eval_batches >= 1, f"eval_batches must be >= 1, got {self.eval_batches}"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.student_layers is None or self.student_layers >= 1,
             f"student_layers must be >= 1, got {self.student_layers}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


def shallow_student(parent: nn.Module, layers: int) -> nn.Module:
    """A copy of ``parent`` keeping ``layers`` evenly spaced blocks (first and last kept)."""
    arch = arch_of(parent, "distill")
    n = n_layers(parent.config)
    if layers >= n:
        raise UsageError(f"student_layers ({layers}) must be fewer than the parent's {n}")
    keep = sorted({round(i * (n - 1) / max(layers - 1, 1)) for i in range(layers)})
    student = copy.deepcopy(parent)
    owner, _, attr = arch.blocks.rpartition(".")
    kept = nn.ModuleList(arch.block_list(student)[i] for i in keep)
    setattr(student.get_submodule(owner), attr, kept)
    for i, block in enumerate(kept):
        for mod in block.modules():  # the KV cache is indexed by layer: renumber the kept ones
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = i
    cfg = student.config
    cfg.num_hidden_layers = layers  # GPT-2's config maps this onto n_layer
    # per-layer lists (transformers 5: layer_types for sliding/full attention) follow the blocks
    for key in ("layer_types",):
        value = getattr(cfg, key, None)
        if isinstance(value, list) and len(value) == n:
            setattr(cfg, key, [value[i] for i in keep])
    return student


def token_stream(tokenizer, split: str, tokens: int) -> torch.Tensor:
    """At least ``tokens`` token ids (or all there are) from the corpus split, in file order."""
    from slimbench.tasks.corpus import load_corpus

    out: list[int] = []
    for row in load_corpus(split):
        out += tokenizer(row.text)["input_ids"]
        if len(out) >= tokens:
            break
    return torch.tensor(out, dtype=torch.long)


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """One batch's loss and its terms (scalar tensors, differentiable).

    Attributes:
        ce: cross-entropy against the next tokens.
        loss: the weighted sum that is minimized.
        kl: KL(teacher || student) of the distributions softened by the temperature (before
            its T^2 weight); None when alpha is 0.
        cos: 1 - cos(student, teacher) of the last hidden states; None when hidden_weight is 0.
    """

    ce: torch.Tensor
    loss: torch.Tensor
    kl: torch.Tensor | None = None
    cos: torch.Tensor | None = None

    def values(self) -> dict[str, float]:
        """The terms that were computed, by name (ce, kl, cos, loss), as numbers."""
        terms = {"ce": self.ce, "kl": self.kl, "cos": self.cos, "loss": self.loss}
        return {k: v.item() for k, v in terms.items() if v is not None}


def distill_loss(student_out, teacher_out, ids: torch.Tensor,
                 config: DistillConfig) -> LossTerms:
    """The loss terms for one batch (next-token prediction: positions 0..T-2 predict 1..T-1)."""
    s = student_out.logits[:, :-1].float().flatten(0, 1)  # (N, V)
    target = ids[:, 1:].flatten()
    ce = F.cross_entropy(s, target)
    kl = cos = None
    loss = (1 - config.alpha) * ce
    if config.alpha > 0:
        t = teacher_out.logits[:, :-1].float().flatten(0, 1)
        temp = config.temperature
        kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1),
                      log_target=True, reduction="batchmean")
        loss = loss + config.alpha * temp * temp * kl
    if config.hidden_weight > 0:
        hs, ht = student_out.hidden_states[-1], teacher_out.hidden_states[-1]
        cos = 1 - F.cosine_similarity(hs.float(), ht.float(), dim=-1).mean()
        loss = loss + config.hidden_weight * cos
    return LossTerms(ce=ce, loss=loss, kl=kl, cos=cos)


@torch.no_grad()
def validation_perplexity(model: nn.Module, windows: torch.Tensor, batch: int = 8) -> float:
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, len(windows), batch):
        ids = windows[i: i + batch]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        nll += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(),
                               reduction="sum").item()
        count += ids[:, 1:].numel()
    model.train()
    return math.exp(nll / count)


def _config_key(config: DistillConfig) -> str:
    fields = dataclasses.asdict(config)
    fields.pop("checkpoint_dir")
    fields.pop("checkpoint_every")
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _used_teacher(student: nn.Module, teacher: nn.Module | None,
                  config: DistillConfig) -> nn.Module | None:
    """The teacher the loss needs (None when neither term uses it), checked against the
    student."""
    if config.alpha == 0 and config.hidden_weight == 0:
        return None  # plain language-model training: the teacher is not used
    if teacher is None:
        raise UsageError("distillation needs a teacher (set teacher=SPEC)")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise UsageError(f"teacher vocabulary ({teacher.config.vocab_size}) differs from the "
                         f"student's ({student.config.vocab_size})")
    widths = hidden_size(teacher.config), hidden_size(student.config)
    if config.hidden_weight > 0 and widths[0] != widths[1]:
        raise UsageError("hidden_weight needs teacher and student of the same width "
                         f"({widths[0]} vs {widths[1]})")
    return teacher


def _optimizer(student: nn.Module, config: DistillConfig):
    """AdamW (no decay on biases and LayerNorms) and its warmup + cosine schedule."""
    from transformers import get_cosine_schedule_with_warmup

    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, config.warmup, config.steps)


def _train_step(student, teacher, ids: torch.Tensor, config: DistillConfig, optimizer,
                schedule, step: int) -> LossTerms:
    """One optimizer step on batch ``ids``; returns the loss terms (stops on a NaN loss)."""
    hidden = config.hidden_weight > 0
    out = student(input_ids=ids, use_cache=False, output_hidden_states=hidden)
    t_out = None
    if teacher is not None:
        with torch.no_grad():
            t_out = teacher(input_ids=ids, use_cache=False, output_hidden_states=hidden)
    terms = distill_loss(out, t_out, ids, config)
    if not torch.isfinite(terms.loss):
        raise CompressionError(f"distillation diverged at step {step + 1}: loss "
                               f"{terms.loss.item()}; lower lr (now {config.lr}) or "
                               "grad_clip")
    optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
    optimizer.step()
    schedule.step()
    return terms


@dataclasses.dataclass(frozen=True)
class TrainingRecord(Typed):
    """How a student was trained (the manifest's ``training``).

    Attributes:
        steps: optimizer steps.
        resumed_from: the step a checkpoint resumed at (0: a fresh start).
        tokens_seen: training tokens, steps x batch x sequence.
        train_seconds: wall time of this run's steps.
        final_val_perplexity: validation perplexity after the last step.
        history: every 10th step and every evaluation: step, the loss terms (ce, kl, cos,
            loss) and val_perplexity where it was measured.
        validation: what the validation perplexity is measured on.
    """

    steps: int
    resumed_from: int
    tokens_seen: int
    train_seconds: float
    final_val_perplexity: float | None
    history: list[dict[str, float]]
    validation: str


@dataclasses.dataclass(frozen=True)
class TeacherRef(Typed):
    """The teacher of a distillation (the manifest's ``teacher``).

    Attributes:
        spec: its model spec, or ``(parent)`` when the parent taught a shallower student.
        weights_sha256: sha256 of its weight files.
        parameters: its parameter count.
    """

    spec: str
    weights_sha256: str | None
    parameters: int


def distill(student: nn.Module, teacher: nn.Module | None, tokenizer,
            config: DistillConfig, show_progress: bool = False) -> TrainingRecord:
    """Train ``student`` in place; returns the training record for the manifest."""
    teacher = _used_teacher(student, teacher, config)
    if tokenizer is None:
        raise UsageError("distillation trains on the corpus and needs a tokenizer")
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    need = config.steps * config.batch_size * config.seq_len
    train = token_stream(tokenizer, "train", min(need, 4_000_000) + config.seq_len)
    val = token_stream(tokenizer, "validation", config.eval_batches * config.seq_len)
    n_val = min(config.eval_batches, len(val) // config.seq_len)
    val_windows = val[: n_val * config.seq_len].view(n_val, config.seq_len).to(device)
    optimizer, schedule = _optimizer(student, config)
    sampler = torch.Generator().manual_seed(config.seed)
    history, start = [], 0
    ckpt = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    if ckpt is not None and (ckpt / CHECKPOINT_STATE).is_file():
        start, history = _resume(ckpt, config, student, optimizer, schedule, sampler)
        log.info("resumed distillation at step %d from %s", start, ckpt)
    t0 = time.perf_counter()
    bar = tqdm(range(start, config.steps), desc="distill", unit="step", initial=start,
               total=config.steps, disable=quiet_progress(show_progress))
    for step in bar:
        starts = torch.randint(0, len(train) - config.seq_len, (config.batch_size,),
                               generator=sampler)
        ids = torch.stack([train[s: s + config.seq_len] for s in starts.tolist()]).to(device)
        terms = _train_step(student, teacher, ids, config, optimizer, schedule, step)
        done = step + 1
        record = {"step": done, **{k: round(v, 5) for k, v in terms.values().items()}}
        if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
            record["val_perplexity"] = round(validation_perplexity(student, val_windows), 4)
            bar.set_postfix(val_ppl=record["val_perplexity"])
        if done % 10 == 0 or "val_perplexity" in record:
            history.append(record)
        if ckpt is not None and (done % config.checkpoint_every == 0 or done == config.steps):
            _save_checkpoint(ckpt, config, done, history, student, optimizer, schedule, sampler)
    student.eval()
    return TrainingRecord(
        steps=config.steps, resumed_from=start, tokens_seen=need,
        train_seconds=time.perf_counter() - t0,
        final_val_perplexity=history[-1].get("val_perplexity") if history else None,
        history=history, validation=f"{n_val} x {config.seq_len} tokens of the corpus "
                                    "validation split (monitoring only)")


def _save_checkpoint(ckpt: Path, config, step, history, student, optimizer, schedule,
                     sampler) -> None:
    from safetensors.torch import save_model

    ckpt.mkdir(parents=True, exist_ok=True)
    save_model(student, str(ckpt / "student.safetensors"))  # handles the tied lm_head
    state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "sampler": sampler.get_state(), "torch_rng": torch.get_rng_state()}
    tmp = ckpt / "trainer.pt.partial"
    torch.save(state, tmp)
    tmp.replace(ckpt / "trainer.pt")
    atomic.write_json(ckpt / CHECKPOINT_STATE, {"step": step, "config": _config_key(config),
                                                "history": history})


def _resume(ckpt: Path, config, student, optimizer, schedule, sampler):
    from safetensors.torch import load_model

    meta = json.loads((ckpt / CHECKPOINT_STATE).read_text())
    if meta.get("config") != _config_key(config):
        raise UsageError(f"{ckpt} holds a checkpoint of a different distillation config; "
                         "use another checkpoint_dir")
    load_model(student, str(ckpt / "student.safetensors"))
    # weights_only: optimizer state is tensors and numbers; never unpickle arbitrary objects
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    sampler.set_state(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    return int(meta["step"]), list(meta["history"])


def _teacher_for(parent: LoadedModel, config: DistillConfig):
    """(teacher model, what it is), or (None, None) when the loss needs no teacher."""
    if config.alpha == 0 and config.hidden_weight == 0:
        return None, None
    if config.teacher is None and config.student_layers is None:
        raise UsageError("distill: set teacher=SPEC (the parent is the student)")
    if config.teacher is None:  # a shallower student is taught by the model it came from
        return parent.model, parent.info
    loaded = load_artifact(config.teacher)
    if isinstance(loaded.model, OnnxModel):
        raise UsageError("distill: the teacher must be a torch model")
    return loaded.model, loaded.info


# version 2: shallow students of every family (arch.py)
@register_step("distill", DistillConfig, version=2,
               help="teacher -> student distillation (KL + CE) on the corpus; or a shallower "
                    "student")
def _apply_distill(parent: LoadedModel, config: DistillConfig, out: Path) -> StepReport:
    student = copy.deepcopy(parent.model)
    if config.student_layers is not None:
        student = shallow_student(student, config.student_layers)
    teacher, teacher_info = _teacher_for(parent, config)
    record = distill(student, teacher, parent.tokenizer, config, show_progress=True)
    student.to("cpu")
    save_model(student, parent.tokenizer, out)
    params, nonzero = count_parameters(student)
    return StepReport(
        format="hf", parameters=params, nonzero_parameters=nonzero,
        dtypes={"weights": "float32"},
        teacher=None if teacher_info is None else TeacherRef(
            spec=config.teacher or "(parent)", weights_sha256=teacher_info.weights_sha256,
            parameters=teacher_info.parameters),
        student_layers=n_layers(student.config), training=record,
        # how close the student stays to the model it was made from (not a preservation
        # claim: a distilled student is a different function, this is its fidelity)
        parity=parity(torch_logits_fn(parent.model), torch_logits_fn(student.eval()),
                      reference_prompts(parent.tokenizer, student.config.vocab_size)))

"""Recipe steps: registered by name, each with a config dataclass validated before any work.

A step takes a loaded model and writes an artifact directory with its manifest. Steps whose
result cannot be stored as safetensors (torch dynamic int8 packs weights into opaque objects)
store the parent's weights plus a ``load_transform`` that ``load_artifact`` re-applies and
re-audits; such a manifest says so, and its ``bytes_on_disk`` is the float file it really is.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from slimbench.compress.artifact import MANIFEST, finish_manifest, staging_dir
from slimbench.compress.calibration import calibration_batches
from slimbench.compress.casts import OrtFp16Config, TorchCastConfig, ort_fp16
from slimbench.compress.distill import DistillConfig, distill, shallow_student
from slimbench.compress.kinds import check_chain
from slimbench.compress.loader import DTYPES, LoadedModel, count_parameters, load_artifact
from slimbench.compress.onnx_export import ONNX_FILE, ExportOnnxConfig, export_onnx
from slimbench.compress.onnx_model import OnnxModel, onnx_logits_fn, onnx_op_counts
from slimbench.compress.ort_optimize import OrtOptimizeConfig, ort_optimize
from slimbench.compress.parity import parity, reference_prompts, torch_logits_fn
from slimbench.compress.prune_structured import (
    StructuredPruneConfig,
    prune_structured,
    to_gpt2,
)
from slimbench.compress.prune_unstructured import UnstructuredPruneConfig, prune_unstructured
from slimbench.compress.quant_ort import (
    OrtDynamicInt8Config,
    OrtStaticInt8Config,
    ort_dynamic_int8,
    ort_static_int8,
    require_onnx_coverage,
)
from slimbench.compress.quant_torch import (
    CompressionError,
    TorchDynamicInt8Config,
    audit_quantization,
    quantize_dynamic_int8,
    require_full_coverage,
)
from slimbench.errors import UsageError
from slimbench.registry import Registry
from slimbench.typecheck import misfit

log = logging.getLogger(__name__)
FP32_PARITY = 1e-4  # max |Δlogits| an fp32 export may show against torch


@dataclasses.dataclass(frozen=True)
class Step:
    """A recipe step.

    ``accepts``/``produces`` are model kinds (``compress/kinds.py``): a chain is checked
    before any work. ``version`` is part of every cache key of the step's artifacts: bump it
    when a change to the step's code changes what it writes.
    """

    name: str
    config_cls: type
    apply: Callable  # (parent LoadedModel, config, staging dir) -> manifest fields
    accepts: tuple[str, ...] = ("torch",)
    produces: str | None = None  # None: the same kind as the input
    transform: Callable | None = None  # re-applied at load time (load_transform steps)
    version: int = 1


STEPS: Registry[Step] = Registry("recipe step")


def make_config(step: Step, params: dict):
    """The step's config from user parameters, with one clear message for a bad one."""
    import typing

    fields = {f.name for f in dataclasses.fields(step.config_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise UsageError(f"step {step.name}: unknown parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(fields)) or '(none)'}")
    # checked before the config is built: its __post_init__ compares values and would fail
    # on a wrong type with a message about Python ('<' not supported between ...)
    try:
        hints = typing.get_type_hints(step.config_cls)
    except Exception:  # an annotation that cannot be resolved: leave it to the dataclass
        hints = {}
    for name, value in params.items():
        wanted = misfit(value, hints[name]) if name in hints else None
        if wanted:
            raise UsageError(f"step {step.name}: {name} must be {wanted}, got {value!r}")
    try:
        return step.config_cls(**params)
    except (TypeError, UsageError) as e:  # every message names the step once
        raise UsageError(f"step {step.name}: {e}") from None


def run_step(name: str, params: dict, parent_spec: str, out: Path,
             parent_label: str | None = None) -> dict:
    """Load ``parent_spec``, apply step ``name`` and write the artifact to ``out``.

    Args:
        parent_label: the parent's name in the manifest when ``parent_spec`` is a staging
            path that will move (a recipe's earlier step).

    Returns:
        The artifact's manifest.
    """
    step = STEPS.get(name)
    config = make_config(step, params)  # validated before any model is loaded
    check_chain(parent_spec, [name])  # an incompatible input is refused before it loads
    parent = load_artifact(parent_spec)
    with staging_dir(out) as tmp:
        fields = step.apply(parent, config, tmp)
        manifest = finish_manifest(tmp, {
            "step": name, "config": dataclasses.asdict(config),
            "recipe": [*parent_recipe(parent), name],
            "parent": {"spec": parent_label or parent_spec,
                       "weights_sha256": parent.info.weights_sha256,
                       "manifest_sha256": (_manifest_sha256(parent_spec) if parent.info.manifest
                                           else None),
                       "parameters": parent.info.parameters},
            "random_weights": parent.info.random_weights, **fields})
    return manifest


def _manifest_sha256(spec: str) -> str | None:
    """The parent artifact's manifest hash: links a chain of artifacts to each other."""
    import hashlib

    path = Path(spec) / MANIFEST
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def parent_recipe(parent: LoadedModel) -> list[str]:
    return list(getattr(parent.info, "recipe", None) or [])


def _save_parent(parent: LoadedModel, tmp: Path) -> None:
    parent.model.save_pretrained(tmp, safe_serialization=True)
    if parent.tokenizer is not None:
        parent.tokenizer.save_pretrained(tmp)


def _apply_torch_int8(parent: LoadedModel, config: TorchDynamicInt8Config, tmp: Path) -> dict:
    _save_parent(parent, tmp)  # float weights; quantization is re-applied on load
    params, nonzero = count_parameters(parent.model)
    quantized = quantize_dynamic_int8(copy.deepcopy(parent.model), config)
    audit = audit_quantization(quantized)
    require_full_coverage(audit)
    prompts = reference_prompts(parent.tokenizer, parent.model.config.vocab_size)
    return {"format": "hf", "load_transform": "torch_dynamic_int8", "parameters": params,
            "nonzero_parameters": nonzero,
            "dtypes": {"block_weights": "int8", "activations": "float32 (quantized per call)"},
            "quantization": audit,
            "parity": parity(torch_logits_fn(parent.model), torch_logits_fn(quantized), prompts)}


def _transform_torch_int8(loaded: LoadedModel, config: TorchDynamicInt8Config) -> LoadedModel:
    loaded.model = quantize_dynamic_int8(loaded.model, config)
    return loaded


def _apply_export_onnx(parent: LoadedModel, config: ExportOnnxConfig, tmp: Path) -> dict:
    if parent.info.device != "cpu" or parent.info.dtype != "float32":
        raise UsageError("export_onnx exports float32 models loaded on cpu")
    params, nonzero = count_parameters(parent.model)
    path = export_onnx(copy.deepcopy(parent.model), tmp, config)
    parent.model.config.save_pretrained(tmp)
    if parent.tokenizer is not None:
        parent.tokenizer.save_pretrained(tmp)
    child = OnnxModel(path, parent.model.config)
    session = child.session()
    prompts = reference_prompts(parent.tokenizer, parent.model.config.vocab_size)
    checked = parity(torch_logits_fn(parent.model), onnx_logits_fn(child, session), prompts)
    ok = (checked["max_abs_logit_diff"] <= FP32_PARITY
          and checked["greedy_identical"] == checked["greedy_prompts"])
    if not ok:
        raise CompressionError(f"ONNX export does not reproduce the torch model: {checked}")
    return {"format": "onnx", "onnx_file": path.name, "opset": config.opset,
            "parameters": params, "nonzero_parameters": nonzero, "dtypes": {"weights": "float32"},
            "graph": onnx_op_counts(path),
            "parity": checked | {"target_max_abs_logit_diff": FP32_PARITY}}


def _copy_side_files(src: Path, dst: Path) -> None:
    """Config and tokenizer files travel with every ONNX artifact."""
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(("model.onnx", MANIFEST)):
            shutil.copy2(f, dst / f.name)


def _apply_ort_dynamic_int8(parent: LoadedModel, config: OrtDynamicInt8Config,
                            tmp: Path) -> dict:
    weights = "int8" + (" (embeddings too)" if config.quantize_embeddings else "")
    return _ort_quant_step(parent, tmp, lambda src, dst: ort_dynamic_int8(src, dst, config),
                           weights, "dynamic uint8")


def _apply_ort_static_int8(parent: LoadedModel, config: OrtStaticInt8Config,
                           tmp: Path) -> dict:
    def quantize(src: Path, dst: Path) -> dict:
        return ort_static_int8(src, dst, config, parent.model, parent.tokenizer)

    return _ort_quant_step(parent, tmp, quantize, "int8 (QDQ)", "static int8 (calibrated)")


def _ort_quant_step(parent: LoadedModel, tmp: Path, quantize, weights: str,
                    activations: str) -> dict:
    src = parent.model.path
    _copy_side_files(src.parent, tmp)
    dst = tmp / ONNX_FILE
    audit = quantize(src, dst)
    require_onnx_coverage(audit)
    return _ort_quant_fields(parent, dst, audit, weights, activations)


def _ort_quant_fields(parent: LoadedModel, dst: Path, audit: dict, weights: str,
                      activations: str) -> dict:
    src = parent.model.path
    child = OnnxModel(dst, parent.model.config)
    prompts = reference_prompts(parent.tokenizer, parent.model.config.vocab_size)
    pm = parent.info.manifest or {}
    return {"format": "onnx", "onnx_file": ONNX_FILE, "opset": pm.get("opset"),
            "parameters": parent.info.parameters,
            "nonzero_parameters": parent.info.nonzero_parameters,
            "dtypes": {"weights": weights, "activations": activations},
            "graph": onnx_op_counts(dst), "quantization": audit,
            "bytes_vs_parent": dst.stat().st_size / src.stat().st_size,
            "parity": parity(onnx_logits_fn(parent.model), onnx_logits_fn(child), prompts)}


def _apply_ort_optimize(parent: LoadedModel, config: OrtOptimizeConfig, tmp: Path) -> dict:
    src, cfg = parent.model.path, parent.model.config
    _copy_side_files(src.parent, tmp)
    dst = tmp / ONNX_FILE
    fusions = ort_optimize(src, dst, config, cfg.n_head, cfg.n_embd)
    fields = _ort_quant_fields(parent, dst, {}, "float32", "float32")
    fields.pop("quantization")
    if fields["parity"]["max_abs_logit_diff"] > FP32_PARITY:
        raise CompressionError(f"optimized graph drifted from its parent: {fields['parity']}")
    return fields | {"fusions": fusions}


def _apply_torch_cast(parent: LoadedModel, config: TorchCastConfig, tmp: Path) -> dict:
    params, nonzero = count_parameters(parent.model)
    half = copy.deepcopy(parent.model).to(DTYPES[config.dtype])
    _save_parent(LoadedModel(half, parent.tokenizer, parent.info), tmp)
    prompts = reference_prompts(parent.tokenizer, parent.model.config.vocab_size)
    return {"format": "hf", "load_dtype": config.dtype, "parameters": params,
            "nonzero_parameters": nonzero, "dtypes": {"weights": config.dtype},
            "parity": parity(torch_logits_fn(parent.model), torch_logits_fn(half), prompts)}


def _apply_ort_fp16(parent: LoadedModel, config: OrtFp16Config, tmp: Path) -> dict:
    src = parent.model.path
    _copy_side_files(src.parent, tmp)
    ort_fp16(src, tmp / ONNX_FILE, config)
    fields = _ort_quant_fields(parent, tmp / ONNX_FILE, {}, "float16", "float16")
    fields.pop("quantization")
    return fields


def _calibration(parent: LoadedModel, samples: int, seq_len: int) -> list:
    return calibration_batches(parent.tokenizer, parent.model.config.vocab_size, samples,
                               min(seq_len, parent.model.config.n_positions))


def _apply_prune_unstructured(parent: LoadedModel, config: UnstructuredPruneConfig,
                              tmp: Path) -> dict:
    model = copy.deepcopy(parent.model)
    batches = (_calibration(parent, config.calib_samples, config.calib_seq_len)
               if config.method == "wanda" else None)
    audit = prune_unstructured(model, config, batches)
    # exact counts per layer: k = round(s * n) zeros, so the overall share is within rounding
    if abs(audit["realized"] - audit["requested"]) > 1e-3:
        raise CompressionError(f"realized sparsity {audit['realized']:.4f} does not match the "
                               f"requested {audit['requested']:.4f}")
    _save_parent(LoadedModel(model, parent.tokenizer, parent.info), tmp)
    params, nonzero = count_parameters(model)
    prompts = reference_prompts(parent.tokenizer, model.config.vocab_size)
    return {"format": "hf", "parameters": params, "nonzero_parameters": nonzero,
            "dtypes": {"weights": "float32 (dense, zeros stored)"}, "sparsity": audit,
            "parity": parity(torch_logits_fn(parent.model), torch_logits_fn(model), prompts)}


def _apply_prune_structured(parent: LoadedModel, config: StructuredPruneConfig,
                            tmp: Path) -> dict:
    if parent.model.config.model_type != "gpt2":
        raise UsageError("prune_structured knows GPT-2's layout; got model type "
                         f"{parent.model.config.model_type!r}")
    work = copy.deepcopy(parent.model)
    batches = (_calibration(parent, config.calib_samples, config.calib_seq_len)
               if config.importance == "taylor" else None)
    audit = prune_structured(work, config, batches)
    model = to_gpt2(work)
    prompts = reference_prompts(parent.tokenizer, model.config.vocab_size)
    rebuilt = parity(torch_logits_fn(work), torch_logits_fn(model), prompts)
    if rebuilt["max_abs_logit_diff"] > 1e-5:
        raise CompressionError(f"pruned model changed when rebuilt from its config: {rebuilt}")
    _save_parent(LoadedModel(model, parent.tokenizer, parent.info), tmp)
    reloaded = load_artifact(str(tmp))  # what a user gets back from disk, checked now
    params, nonzero = count_parameters(reloaded.model)
    if params != audit["parameters"][1] or reloaded.model.config.n_inner != audit["n_inner"][1]:
        raise CompressionError("pruned checkpoint does not reload with the pruned shapes")
    return {"format": "hf", "parameters": params, "nonzero_parameters": nonzero,
            "dtypes": {"weights": "float32"}, "structure": audit,
            "parity": parity(torch_logits_fn(parent.model), torch_logits_fn(model), prompts)}


def _apply_distill(parent: LoadedModel, config: DistillConfig, tmp: Path) -> dict:
    student = copy.deepcopy(parent.model)
    if config.student_layers is not None:
        student = shallow_student(student, config.student_layers)
    teacher, teacher_info = None, None
    if config.alpha > 0 or config.hidden_weight > 0:
        if config.teacher is None and config.student_layers is None:
            raise UsageError("distill: set teacher=SPEC (the parent is the student)")
        if config.teacher is None:
            teacher, teacher_info = parent.model, parent.info
        else:
            loaded = load_artifact(config.teacher)
            if isinstance(loaded.model, OnnxModel):
                raise UsageError("distill: the teacher must be a torch model")
            teacher, teacher_info = loaded.model, loaded.info
    record = distill(student, teacher, parent.tokenizer, config, show_progress=True)
    student.to("cpu")
    _save_parent(LoadedModel(student, parent.tokenizer, parent.info), tmp)
    params, nonzero = count_parameters(student)
    return {"format": "hf", "parameters": params, "nonzero_parameters": nonzero,
            "dtypes": {"weights": "float32"},
            "teacher": None if teacher_info is None else {
                "spec": config.teacher or "(parent)", "weights_sha256":
                    teacher_info.weights_sha256, "parameters": teacher_info.parameters},
            "student_layers": student.config.n_layer, "training": record}


STEPS.add("prune_unstructured", Step("prune_unstructured", UnstructuredPruneConfig,
                                     _apply_prune_unstructured),
          "magnitude / Wanda / N:M unstructured pruning (zeros stored; no dense speedup)")
STEPS.add("prune_structured", Step("prune_structured", StructuredPruneConfig,
                                   _apply_prune_structured),
          "remove heads, MLP channels and width with torch-pruning: a smaller GPT-2")
STEPS.add("distill", Step("distill", DistillConfig, _apply_distill),
          "teacher -> student distillation (KL + CE) on the corpus; or a shallower student")
STEPS.add("torch_cast", Step("torch_cast", TorchCastConfig, _apply_torch_cast,
                             produces="torch-cast"),
          "store torch weights as bfloat16 (CPU) or float16 (CUDA)")
STEPS.add("ort_fp16", Step("ort_fp16", OrtFp16Config, _apply_ort_fp16, ("onnx",)),
          "convert an ONNX artifact to float16 (float32 inputs/outputs kept)")
STEPS.add("ort_optimize", Step("ort_optimize", OrtOptimizeConfig, _apply_ort_optimize,
                               ("onnx",)),
          "ONNX Runtime transformer optimizer (GPT-2 fusions) on an ONNX artifact")
STEPS.add("ort_static_int8", Step("ort_static_int8", OrtStaticInt8Config,
                                  _apply_ort_static_int8, ("onnx",)),
          "ONNX Runtime static INT8 (QDQ) of weight MatMuls, calibrated on the train corpus")
STEPS.add("ort_dynamic_int8", Step("ort_dynamic_int8", OrtDynamicInt8Config,
                                   _apply_ort_dynamic_int8, ("onnx",)),
          "ONNX Runtime dynamic INT8 of every weight MatMul (+ embeddings) of an ONNX artifact")
STEPS.add("export_onnx", Step("export_onnx", ExportOnnxConfig, _apply_export_onnx,
                              produces="onnx"),
          "ONNX export: one merged graph with explicit KV cache, dynamic batch/sequence")
STEPS.add("torch_dynamic_int8", Step("torch_dynamic_int8", TorchDynamicInt8Config,
                                     _apply_torch_int8, produces="torch-int8",
                                     transform=_transform_torch_int8),
          "PyTorch dynamic INT8 of every block Linear (Conv1D normalized first)")

"""Load a checkpoint the one way every part of slimbench reads models.

A *spec* names what to load:
  ``reference``                  the embedded reference checkpoint
  ``shape:NAME[:key=value,...]`` random weights in a published shape (``shapes.py``; no download)
  ``./dir`` or ``/abs/dir``      a local Hugging Face directory
  ``org/name``                   a Hugging Face hub id (uses the local HF cache when offline
                                 or when the hub cannot be reached; ``org/`` must not be a
                                 local folder, else the spec is read as a missing path)

Weights load from safetensors only unless the caller opts in to pickle (``allow_pickle``):
unpickling a file can run arbitrary code. ``trust_remote_code`` stays off unless asked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from slimbench.compress.arch import max_positions
from slimbench.compress.artifact import (
    MANIFEST,
    Manifest,
    artifact_trait,
    read_manifest,
    sha256_file,
    verify_files,
)
from slimbench.compress.hub import (
    cached_snapshot,
    first_line,
    hub_failed,
    hub_weight_files,
    probe_hub,
)
from slimbench.compress.reference import REFERENCE_DIR, REFERENCE_NAME
from slimbench.compress.shapes import ShapeSpec, build_shape_model
from slimbench.compress.step_registry import STEPS, make_config
from slimbench.errors import ModelLoadError, UsageError
from slimbench.schema import Artifact

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How to load a spec.

    Args:
        dtype: ``float32``, ``float16`` or ``bfloat16``; None loads as stored (an artifact's
            ``load_dtype``, else float32).
        device: ``cpu`` or ``cuda`` (``cuda:N`` too).
        allow_pickle: load ``pytorch_model.bin``-style weights when no safetensors exist.
        trust_remote_code: run model code shipped with a checkpoint (off by default).
        revision: hub revision (branch, tag or commit).
        seed: seed for shape models' random weights.
    """

    dtype: str | None = None
    device: str = "cpu"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise UsageError(f"unknown device {self.device!r}; use cpu, cuda or cuda:N")


@dataclasses.dataclass
class LoadedModel:
    """A loaded model and what it is.

    Attributes:
        model: a torch causal LM, or an ``OnnxModel`` for an ONNX artifact.
        tokenizer: a transformers tokenizer; None for shape models.
        info: what was loaded, as results record it (``slimbench.schema.Artifact``; its
            ``manifest`` is the artifact's manifest JSON).
        manifest: the artifact's typed manifest; None for a plain checkpoint.
    """

    model: PreTrainedModel
    tokenizer: object | None
    info: Artifact
    manifest: Manifest | None = None


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters); tied weights count once, and torch's int8 Linears
    (whose packed weights ``parameters()`` does not list) count too."""
    from slimbench.compress.torch_int8_store import int8_parameters

    params = list(model.parameters())  # nn.Module.parameters() already de-duplicates ties
    total, nonzero = int8_parameters(model)
    total += sum(p.numel() for p in params)
    nonzero += sum(int(torch.count_nonzero(p).item()) for p in params)
    return total, nonzero


def load_artifact(spec: str, options: LoadOptions | None = None) -> LoadedModel:
    """Load ``spec`` (see module docstring) as a causal LM in eval mode.

    Raises:
        ModelLoadError: missing path, corrupt or pickle-only checkpoint, not a causal LM,
            hub failure.
        UsageError: malformed shape spec or options.
    """
    opts = options or LoadOptions()
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {opts.device!r} requested but no CUDA GPU is available")
    if spec == REFERENCE_NAME:
        loaded = _load_dir(REFERENCE_DIR, spec, "reference", opts)
    elif spec.startswith("shape:"):
        shape = ShapeSpec.parse(spec)
        model = build_shape_model(shape, seed=opts.seed)
        loaded = LoadedModel(model, None, _info(model, shape.label, "shape", None, opts, True))
    elif spec_source(spec) == "path":
        loaded = _load_local(Path(spec).expanduser(), spec, opts)
    else:
        loaded = _load_hub(spec, opts)
    dtype = opts.dtype or (loaded.manifest and loaded.manifest.load_dtype) or "float32"
    if isinstance(loaded.model, torch.nn.Module):
        loaded.model.to(device=opts.device, dtype=DTYPES[dtype])
    loaded.info.dtype, loaded.info.device = dtype, opts.device
    return loaded


def spec_source(spec: str) -> str:
    """``reference``, ``shape``, ``path`` (an existing local path) or ``hub``.

    Raises:
        ModelLoadError: a path that does not exist (also ``m/x`` beside a local folder ``m``).
    """
    if spec == REFERENCE_NAME:
        return "reference"
    if spec.startswith("shape:"):
        return "shape"
    if Path(spec).expanduser().exists():
        return "path"
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise ModelLoadError(f"model path {spec!r} does not exist")
    if "/" in spec and Path(spec.split("/")[0]).expanduser().is_dir():
        # 'm/x' beside a local folder m/ is a mistyped path, not a hub id to go looking for
        raise ModelLoadError(f"model path {spec!r} does not exist (read as a path, not a "
                             f"hub id, because {spec.split('/')[0]}/ is a local folder)")
    return "hub"


def _load_local(path: Path, spec: str, opts: LoadOptions) -> LoadedModel:
    manifest = read_manifest(path) if path.is_dir() else None
    trait = artifact_trait(path) if manifest is None and path.is_dir() else None
    if trait:  # without its manifest an artifact loads as something else (see artifact_trait)
        raise ModelLoadError(f"{spec!r} is a slimbench artifact ({trait}) but has no "
                             f"{MANIFEST}: what it holds cannot be identified or verified; "
                             "rebuild it")
    if manifest is None:
        return _load_dir(path, spec, "local", opts)
    # an artifact is measured only as it was written: a flipped byte or a swapped file
    # would otherwise be benchmarked under its manifest's name and figures
    problems = verify_files(path, manifest)
    if problems:
        raise ModelLoadError(f"artifact {spec!r} does not match its manifest "
                             f"({'; '.join(problems[:3])}): it was changed after it was "
                             "written; rebuild it")
    if manifest.format == "onnx":
        return _load_onnx(path, spec, manifest, opts)
    if manifest.format == "openvino":
        return _load_openvino(path, spec, manifest, opts)
    if manifest.format == "ctranslate2":
        return _load_ctranslate2(path, spec, manifest, opts)
    if manifest.format == "genai":
        return _load_genai(path, spec, manifest, opts)
    transform = manifest.load_transform
    if transform and (opts.device != "cpu" or opts.dtype not in (None, "float32")):
        raise UsageError(f"{spec!r} is a {transform} artifact: it runs on cpu in float32 only")
    step = STEPS.get(transform) if transform else None
    loaded = _load_by_step(path, spec, step, manifest, opts) if step and step.load else None
    if loaded is None:
        loaded = _load_dir(path, spec, "artifact", opts)
        if step is not None and step.transform is not None:
            # the step re-applies itself and checks the result against the manifest
            loaded = step.transform(loaded, make_config(step, manifest.config or {}),
                                    manifest)
    info = loaded.info
    info.recipe, info.manifest = list(manifest.recipe), manifest.to_dict()
    info.random_weights = bool(manifest.random_weights)
    loaded.manifest = manifest
    return loaded


def _load_by_step(path: Path, spec: str, step, manifest: Manifest,
                  opts: LoadOptions) -> LoadedModel | None:
    """An artifact its step loads itself (``Step.load``: not a Hugging Face folder), or None
    where the step says the folder is of its earlier, Hugging Face form."""
    safe = sorted(path.glob("*.safetensors"))
    _verify_safetensors(safe)
    model = step.load(path, make_config(step, manifest.config or {}), manifest)
    if model is None:
        return None
    return LoadedModel(model, _tokenizer(path, opts),
                       _info(model, spec, "artifact", str(path.resolve()), opts, False, safe))


def _load_onnx(path: Path, spec: str, manifest: Manifest, opts: LoadOptions) -> LoadedModel:
    from slimbench.compress.onnx_model import OnnxModel

    if opts.dtype not in (None, "float32"):
        raise UsageError(f"{spec!r} is an ONNX artifact; its dtype is fixed at export "
                         f"(got --dtype {opts.dtype})")
    config = AutoConfig.from_pretrained(path)
    onnx_file = manifest.onnx_file
    if onnx_file is None:
        raise ModelLoadError(f"{spec!r}: its ONNX manifest names no onnx_file; rebuild it")
    onnx_files = [path / n for n in manifest.files if n.startswith(onnx_file)]
    model = OnnxModel(path / onnx_file, config, opts.device)
    digest = sha256_file(path / onnx_file)  # the bytes measured, not the record
    info = Artifact(
        spec=spec, kind="artifact", path=str(path.resolve()),
        random_weights=bool(manifest.random_weights), model_type=config.model_type,
        parameters=manifest.report["parameters"],
        nonzero_parameters=manifest.report["nonzero_parameters"],
        bytes_on_disk=sum(f.stat().st_size for f in onnx_files), dtype="float32",
        device=opts.device, weights_sha256=digest, recipe=list(manifest.recipe),
        manifest=manifest.to_dict())
    return LoadedModel(model, _tokenizer(path, opts), info, manifest)


def _load_openvino(path: Path, spec: str, manifest: Manifest,
                   opts: LoadOptions) -> LoadedModel:
    from slimbench.compress.openvino_model import OV_BIN, OV_XML, OvModel

    config = AutoConfig.from_pretrained(path)
    info = _engine_info(path, spec, manifest, opts, "an OpenVINO", config,
                        [path / OV_XML, path / OV_BIN])
    return LoadedModel(OvModel(path / OV_XML, config), _tokenizer(path, opts), info, manifest)


def _load_ctranslate2(path: Path, spec: str, manifest: Manifest,
                      opts: LoadOptions) -> LoadedModel:
    from slimbench.compress.ctranslate2_model import CT2_BIN, CT2_VOCAB, HF_CONFIG, Ct2Model

    config = AutoConfig.from_pretrained(path / HF_CONFIG)
    info = _engine_info(path, spec, manifest, opts, "a CTranslate2", config,
                        [path / CT2_BIN, path / CT2_VOCAB])
    return LoadedModel(Ct2Model(path, config), _tokenizer(path, opts), info, manifest)


def _load_genai(path: Path, spec: str, manifest: Manifest, opts: LoadOptions) -> LoadedModel:
    from slimbench.compress.genai_model import GENAI_CONFIG, GENAI_ONNX, GenaiModel

    config = AutoConfig.from_pretrained(path)
    files = [path / GENAI_CONFIG] + sorted(path / n for n in manifest.files
                                          if n.startswith(GENAI_ONNX))
    info = _engine_info(path, spec, manifest, opts, "an ONNX Runtime GenAI", config, files)
    return LoadedModel(GenaiModel(path, config), _tokenizer(path, opts), info, manifest)


def _engine_info(path: Path, spec: str, manifest: Manifest, opts: LoadOptions, engine: str,
                 config, files: list[Path]) -> Artifact:
    """The record of an artifact another engine runs (its formats fixed at export, cpu)."""
    if opts.device != "cpu" or opts.dtype not in (None, "float32"):
        raise UsageError(f"{spec!r} is {engine} artifact: it runs on cpu, its dtype fixed "
                         f"at export (got --device {opts.device}, --dtype {opts.dtype})")
    h = hashlib.sha256()
    for f in files:  # the bytes measured: the model and what it reads with it
        digest = sha256_file(f, h)
    return Artifact(
        spec=spec, kind="artifact", path=str(path.resolve()),
        random_weights=bool(manifest.random_weights), model_type=config.model_type,
        parameters=manifest.report["parameters"],
        nonzero_parameters=manifest.report["nonzero_parameters"],
        bytes_on_disk=sum(f.stat().st_size for f in files), dtype="float32",
        device="cpu", weights_sha256=digest, recipe=list(manifest.recipe),
        manifest=manifest.to_dict())


def spec_max_positions(spec: str) -> int | None:
    """The positions of a model spec where its config is at hand without loading weights or
    going online: the embedded reference, a shape, a local folder's ``config.json``. None for
    others (a hub id, an ONNX file, a config this cannot read): their runtime knows.

    Raises:
        UsageError: a malformed shape spec.
    """
    if spec.startswith("shape:"):
        return max_positions(ShapeSpec.parse(spec).config())
    folder = REFERENCE_DIR if spec == REFERENCE_NAME else Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        return None
    try:  # remote code stays off here: a config that needs it is left to its cell
        return max_positions(AutoConfig.from_pretrained(folder))
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith("/") or spec.count("/") > 1


def _check_causal(config, where: str) -> None:
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"{where} is a {config.model_type!r} model, not a causal LM "
            "(AutoModelForCausalLM has no class for it)")


def _weight_files(path: Path) -> tuple[list[Path], list[Path]]:
    safe = sorted(path.glob("*.safetensors"))
    pickled = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    return safe, pickled


def _verify_safetensors(files: list[Path]) -> None:
    """Open every file's header and tensor table so corruption fails here, clearly."""
    from safetensors import safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                keys = list(st.keys())
                if keys:  # reading one tensor checks that the data section is really there
                    st.get_slice(keys[-1])[...]
        except Exception as e:  # safetensors raises its own error types, not one base class
            raise ModelLoadError(f"corrupt safetensors file {f}: {e}") from None


def _load_dir(path: Path, spec: str, kind: str, opts: LoadOptions) -> LoadedModel:
    if not path.is_dir():
        raise ModelLoadError(f"{spec!r} is a file; expected a Hugging Face model directory")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{spec!r} has no config.json: not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=opts.trust_remote_code)
    except Exception as e:  # transformers raises ValueError/OSError/KeyError variously
        _refuse_remote_code(e, repr(spec), opts)
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {e}") from None
    _check_causal(config, repr(spec))
    safe, pickled = _weight_files(path)
    if not safe:
        if not pickled:
            raise ModelLoadError(f"{spec!r} holds no weights (no *.safetensors file)")
        if not opts.allow_pickle:
            names = ", ".join(p.name for p in pickled)
            raise ModelLoadError(
                f"{spec!r} holds only pickle weights ({names}); unpickling can run code, so "
                "slimbench loads safetensors only. Convert the checkpoint, or pass "
                "--allow-pickle if you trust the file.")
    _verify_safetensors(safe)
    try:
        # ignore_mismatched_sizes=True only turns transformers' "look at the above report!"
        # (a report the quiet CLI never shows) into mismatched_keys with both shapes, which
        # _check_loading_info refuses by name
        model, info = AutoModelForCausalLM.from_pretrained(
            path, config=config, use_safetensors=bool(safe), ignore_mismatched_sizes=True,
            trust_remote_code=opts.trust_remote_code, output_loading_info=True)
    except Exception as e:
        _refuse_remote_code(e, repr(spec), opts)
        raise ModelLoadError(f"cannot load weights from {spec!r}: {e}") from None
    _check_loading_info(info, spec, config)
    tokenizer = _tokenizer(path, opts)
    files = safe or pickled
    return LoadedModel(model.eval(), tokenizer,
                       _info(model, spec, kind, str(path.resolve()), opts, False, files))


def _check_loading_info(info: dict, spec: str, config) -> None:
    # A checkpoint missing weights loads with random ones and only a warning; that would
    # silently benchmark a different model than the user named. A tied lm_head is the one
    # weight that is legitimately absent from the file.
    tied = getattr(config, "tie_word_embeddings", False)
    missing = sorted(k for k in info.get("missing_keys", [])
                     if not (tied and k.endswith("lm_head.weight")))
    mismatched = sorted(info.get("mismatched_keys", []), key=str)
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:5])})")
        if mismatched:
            shapes = "; ".join(map(_mismatch_text, mismatched[:5]))
            parts.append(f"{len(mismatched)} weights of the wrong shape ({shapes})")
        raise ModelLoadError(f"{spec!r}: {' and '.join(parts)}; refusing to fill them with "
                             "random values")


def _mismatch_text(m) -> str:
    if isinstance(m, tuple) and len(m) == 3:  # (key, shape in the file, shape from config)
        return f"{m[0]} is {list(m[1])} in the checkpoint but {list(m[2])} by its config"
    return str(m)


def _refuse_remote_code(e: Exception, where: str, opts: LoadOptions) -> None:
    # transformers' refusal names its Python argument; a slimbench user needs the CLI flag
    if not opts.trust_remote_code and "trust_remote_code" in str(e):
        raise ModelLoadError(f"{where} ships its own model code (auto_map in config.json); "
                             "slimbench runs it only with --trust-remote-code") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _tokenizer(where: str | Path, opts: LoadOptions):
    if isinstance(where, Path) and not any((where / f).exists() for f in TOKENIZER_FILES):
        return None  # transformers 5 would build an empty tokenizer from config.json alone
    try:
        return AutoTokenizer.from_pretrained(where, revision=opts.revision,
                                             trust_remote_code=opts.trust_remote_code)
    except Exception as e:  # a checkpoint without a tokenizer still benchmarks fine
        log.info("no tokenizer for %s (%s); quality tasks will be unavailable", where, e)
        return None


def _load_hub(hub_id: str, opts: LoadOptions) -> LoadedModel:
    from huggingface_hub import constants

    # Offline, or with the hub unreachable, only the local cache can answer; asking
    # transformers would retry the network and bury the answer under warnings.
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else None
    # Online the hub is asked first: a cached 'main' may be older than the hub's.
    why = why or probe_hub(hub_id, opts.revision)
    if why:
        snap = cached_snapshot(hub_id, opts.revision)
        if snap is None:
            raise hub_failed(hub_id, f"it is not in the local Hugging Face cache and {why}")
        log.info("hub unavailable (%s); loading %s from the local cache %s", why, hub_id, snap)
        return _load_dir(snap, hub_id, "hub", opts)
    try:
        config = AutoConfig.from_pretrained(hub_id, revision=opts.revision,
                                            trust_remote_code=opts.trust_remote_code)
        _check_causal(config, repr(hub_id))
        model, info = AutoModelForCausalLM.from_pretrained(
            hub_id, config=config, revision=opts.revision,
            use_safetensors=None if opts.allow_pickle else True, ignore_mismatched_sizes=True,
            trust_remote_code=opts.trust_remote_code, output_loading_info=True)
    except ModelLoadError:
        raise
    except Exception as e:
        _refuse_remote_code(e, repr(hub_id), opts)
        raise hub_failed(hub_id, first_line(e)) from None
    _check_loading_info(info, hub_id, config)
    files = hub_weight_files(hub_id, opts.revision)
    return LoadedModel(model.eval(), _tokenizer(hub_id, opts),
                       _info(model, hub_id, "hub", None, opts, False, files))


def _info(model, spec: str, kind: str, path: str | None, opts: LoadOptions, random: bool,
          files: list[Path] | None = None) -> Artifact:
    total, nonzero = count_parameters(model)
    files = files or []
    digest = None
    if files:  # one digest over the weight files in order (what the reference card records)
        h = hashlib.sha256()
        for f in files:
            digest = sha256_file(f, h)
    return Artifact(
        spec=spec, kind=kind, path=path, random_weights=random,
        model_type=model.config.model_type, parameters=total, nonzero_parameters=nonzero,
        bytes_on_disk=sum(f.stat().st_size for f in files) if files else None,
        dtype=opts.dtype, device=opts.device, weights_sha256=digest)

"""Torch dynamic int8 models on disk as int8: written and rebuilt without pickle.

Written by hand because no library does it safely: torch's packed int8 Linear keeps its weight
in an opaque packed-params object whose state only pickle can save (slimbench never unpickles
weights), and the transformers quantizers that write int8 safetensors (torchao) pack for other
kernels. So each quantized Linear is stored as its int8 weight, per-tensor scale, zero point and
float bias (``INT8_FILE``); every other tensor as it is, a tied one once (``FLOAT_FILE``, the
ties in its metadata). Neither file is named ``model.safetensors``: no tool mistakes the folder
for a float checkpoint and fills the missing weights with random ones.

A model is rebuilt without ever holding its float Linear weights: built from its config with
initialization skipped (transformers' ``no_init_weights``: the float tensors are allocated but
never written, so their pages never become resident), the int8 modules swapped in and the float
tensors assigned, not copied. So the int8 artifact loads in less memory than its float parent.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from slimbench.compress.int8_embeddings import (
    TIED_TO,
    embedding_int8,
    int8_embedding,
    int8_projection,
)
from slimbench.errors import CompressionError, ModelLoadError

INT8_FILE = "int8_linears.safetensors"
FLOAT_FILE = "float_tensors.safetensors"
_TIES = "slimbench_ties"  # FLOAT_FILE metadata: {tied key left out: the key stored}
# INT8_FILE metadata: {"embeddings": [int8 embeddings], "ties": {int8 projection: embedding}}
_LAYOUT = "slimbench_int8"


def save_int8(model: nn.Module, out: Path) -> list[Path]:
    """Write ``model`` (quantized by ``quant_torch.quantize_dynamic_int8``) into ``out`` as
    ``INT8_FILE`` and ``FLOAT_FILE``, plus its config; the files written."""
    from safetensors.torch import save_file

    int8, quantized, layout = {}, set(), {"embeddings": [], "ties": {}}
    for name, mod in model.named_modules():
        if isinstance(mod, nnq.Embedding):
            q, scale = embedding_int8(mod)
            int8[f"{name}.weight"], int8[f"{name}.scale"] = q, scale
            layout["embeddings"].append(name)
            quantized.add(name)
        if not isinstance(mod, nnqd.Linear):
            continue
        quantized.add(name)
        if mod.bias() is not None:
            int8[f"{name}.bias"] = mod.bias().detach().contiguous()
        if getattr(mod, TIED_TO, None):  # its int8 matrix is its embedding's, stored once
            layout["ties"][name] = getattr(mod, TIED_TO)
            continue
        w = mod.weight()
        if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            scale = torch.tensor([w.q_scale()], dtype=torch.float64)
            zero_point = torch.tensor([w.q_zero_point()], dtype=torch.int64)
        elif w.qscheme() == torch.per_channel_affine and w.q_per_channel_axis() == 0:
            scale, zero_point = w.q_per_channel_scales(), w.q_per_channel_zero_points()
        else:
            raise CompressionError(f"{name}: int8 weights quantized {w.qscheme()}; only "
                                   "per-tensor and per-row scales are stored")
        int8[f"{name}.weight"] = w.int_repr().contiguous()
        int8[f"{name}.scale"] = scale.double().contiguous()
        int8[f"{name}.zero_point"] = zero_point.long().contiguous()
    floats, ties, stored = {}, {}, {}
    for key, t in model.state_dict(keep_vars=False).items():
        if not isinstance(t, torch.Tensor) or _owner(key, quantized):
            continue
        if t.numel() and t.data_ptr() in stored:  # a tied weight: once, tied again at load
            ties[key] = stored[t.data_ptr()]
            continue
        stored[t.data_ptr()] = key
        floats[key] = t.detach().contiguous()
    out = Path(out)
    # One metadata key per file: safetensors writes its metadata in the order of a Rust
    # HashMap, random per call, so two keys would give the same model different bytes (sha256).
    save_file(int8, out / INT8_FILE, metadata={_LAYOUT: json.dumps(layout, sort_keys=True)})
    save_file(floats, out / FLOAT_FILE, metadata={_TIES: json.dumps(ties, sort_keys=True)})
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    return [out / FLOAT_FILE, out / INT8_FILE]


def is_int8_folder(path: Path) -> bool:
    """Whether ``path`` holds a model written by ``save_int8``."""
    return (Path(path) / INT8_FILE).is_file()


def load_int8(path: Path, engine: str) -> nn.Module:
    """The model ``save_int8`` wrote into ``path``, in eval mode, its int8 weights packed for
    the quantized ``engine``.

    Raises:
        ModelLoadError: a file that does not fit the config (a tensor missing or left over).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from slimbench.compress.conv1d import normalize_conv1d

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config)
    torch.backends.quantized.engine = engine
    int8 = load_file(path / INT8_FILE)
    with safe_open(path / INT8_FILE, "pt") as f:
        layout = json.loads((f.metadata() or {}).get(_LAYOUT, "{}"))
    embeddings, tied = layout.get("embeddings", []), layout.get("ties", {})
    names = sorted({k.rpartition(".")[0] for k in int8} | set(tied))
    with warnings.catch_warnings():  # torch's quantized tensors warn that they are deprecated
        warnings.simplefilter("ignore", UserWarning)
        for name in names:
            if name in embeddings:
                module = int8_embedding(int8[f"{name}.weight"], int8[f"{name}.scale"])
            elif name in tied:
                kept = tied[name]
                module = int8_projection(int8[f"{kept}.weight"], int8[f"{kept}.scale"],
                                         int8.get(f"{name}.bias"))
                setattr(module, TIED_TO, tied[name])
            else:
                module = _linear(int8, name)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module)
    normalize_conv1d(model)  # a Conv1D left float is stored in Linear layout
    with safe_open(path / FLOAT_FILE, "pt") as f:
        ties = json.loads((f.metadata() or {}).get(_TIES, "{}"))
    floats = load_file(path / FLOAT_FILE)
    expected = {k for k in model.state_dict() if not _owner(k, set(names))}
    unexpected = [k for k, t in floats.items() if not _assign(model, k, t)]
    missing = sorted(expected - set(floats) - set(ties))
    if missing or unexpected:
        raise ModelLoadError(f"{path}: its int8 model does not fit its config ("
                             f"{len(missing)} tensors missing, e.g. {missing[:3]}; "
                             f"{len(unexpected)} left over or of another shape, e.g. "
                             f"{unexpected[:3]}); rebuild it")
    for key, kept in ties.items():
        module, _, attr = key.rpartition(".")
        kept_module, _, kept_attr = kept.rpartition(".")
        setattr(model.get_submodule(module), attr,
                getattr(model.get_submodule(kept_module), kept_attr))
    return model.eval()


def _linear(int8: dict[str, torch.Tensor], name: str) -> nnqd.Linear:
    """The dynamic int8 Linear ``name`` of an ``INT8_FILE``: one scale, or one per row."""
    weight, scale = int8[f"{name}.weight"], int8[f"{name}.scale"]
    zero_point, bias = int8[f"{name}.zero_point"], int8.get(f"{name}.bias")
    if scale.numel() != 1:
        return int8_projection(weight, scale, bias)
    q = nnqd.Linear(weight.shape[1], weight.shape[0], bias_=bias is not None, dtype=torch.qint8)
    q.set_weight_bias(torch._make_per_tensor_quantized_tensor(
        weight, float(scale), int(zero_point)), bias)
    return q


def _assign(model: nn.Module, key: str, tensor: torch.Tensor) -> bool:
    """Make ``tensor`` the model's parameter or buffer ``key`` (not a copy: the float
    tensors are never held twice); False where the model has no such tensor of that shape.
    By hand, not ``load_state_dict(assign=True)``: torch's int8 Linear reads its own state
    keys whenever a state dict passes by, and its state is not in this file."""
    module_name, _, attr = key.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return False
    for table in (module._parameters, module._buffers):
        old = table.get(attr)
        if old is not None:
            if old.shape != tensor.shape:
                return False
            table[attr] = (nn.Parameter(tensor, requires_grad=old.requires_grad)
                           if isinstance(old, nn.Parameter) else tensor)
            return True
    return False


def int8_parameters(model: nn.Module, weights_only: bool = False) -> tuple[int, int]:
    """(weights, nonzero weights) of the int8 Linears and Embeddings, which ``parameters()``
    does not list; a tied int8 matrix counts once, as ``parameters()`` counts a tied weight.
    ``weights_only``: their int8 weights without the float biases."""
    total = nonzero = 0
    for mod in model.modules():
        tensors = []
        if isinstance(mod, nnq.Embedding):
            tensors = [embedding_int8(mod)[0]]
        elif isinstance(mod, nnqd.Linear):
            tensors = [] if getattr(mod, TIED_TO, None) else [mod.weight().int_repr()]
            if mod.bias() is not None and not weights_only:
                tensors.append(mod.bias())
        for t in tensors:
            total += t.numel()
            nonzero += int(torch.count_nonzero(t).item())
    return total, nonzero


def _owner(key: str, modules: set[str]) -> bool:
    """Whether state key ``key`` belongs to one of ``modules`` (or a submodule of one)."""
    prefix = key.rpartition(".")[0]
    return any(prefix == m or prefix.startswith(m + ".") for m in modules)

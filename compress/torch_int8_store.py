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
from pathlib import Path

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from slimbench.errors import CompressionError, ModelLoadError

INT8_FILE = "int8_linears.safetensors"
FLOAT_FILE = "float_tensors.safetensors"
_TIES = "slimbench_ties"  # FLOAT_FILE metadata: {tied key left out: the key stored}


def save_int8(model: nn.Module, out: Path) -> list[Path]:
    """Write ``model`` (quantized by ``quant_torch.quantize_dynamic_int8``) into ``out`` as
    ``INT8_FILE`` and ``FLOAT_FILE``, plus its config; the files written."""
    from safetensors.torch import save_file

    int8, quantized = {}, set()
    for name, mod in model.named_modules():
        if not isinstance(mod, nnqd.Linear):
            continue
        w = mod.weight()
        if w.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            raise CompressionError(f"{name}: int8 weights quantized {w.qscheme()}; only "
                                   "per-tensor scales are stored")
        int8[f"{name}.weight"] = w.int_repr().contiguous()
        int8[f"{name}.scale"] = torch.tensor([w.q_scale()], dtype=torch.float64)
        int8[f"{name}.zero_point"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
        if mod.bias() is not None:
            int8[f"{name}.bias"] = mod.bias().detach().contiguous()
        quantized.add(name)
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
    save_file(int8, out / INT8_FILE, metadata={"format": "pt"})
    # One metadata key only: safetensors writes its metadata in the order of a Rust HashMap,
    # random per call, so two keys would give the same model different bytes (and sha256).
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
    names = sorted({k.rpartition(".")[0] for k in int8})
    for name in names:
        weight = int8[f"{name}.weight"]
        q = nnqd.Linear(weight.shape[1], weight.shape[0], bias_=f"{name}.bias" in int8,
                        dtype=torch.qint8)
        q.set_weight_bias(torch._make_per_tensor_quantized_tensor(
            weight, float(int8[f"{name}.scale"]), int(int8[f"{name}.zero_point"])),
            int8.get(f"{name}.bias"))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q)
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


def int8_parameters(model: nn.Module) -> tuple[int, int]:
    """(weights, nonzero weights) of the int8 Linears, which ``parameters()`` does not list."""
    total = nonzero = 0
    for mod in model.modules():
        if isinstance(mod, nnqd.Linear):
            w = mod.weight().int_repr()
            total += w.numel()
            nonzero += int(torch.count_nonzero(w).item())
            if mod.bias() is not None:
                total += mod.bias().numel()
                nonzero += int(torch.count_nonzero(mod.bias()).item())
    return total, nonzero


def _owner(key: str, modules: set[str]) -> bool:
    """Whether state key ``key`` belongs to one of ``modules`` (or a submodule of one)."""
    prefix = key.rpartition(".")[0]
    return any(prefix == m or prefix.startswith(m + ".") for m in modules)

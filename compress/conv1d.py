"""Conv1D -> nn.Linear normalization for Hugging Face GPT-2.

HF GPT-2 blocks use ``transformers.pytorch_utils.Conv1D`` (``y = x @ W + b`` with W stored as
(in, out)), not ``nn.Linear`` (W stored as (out, in)). Quantizers and pruners that look for
``nn.Linear`` silently skip every block layer of a raw GPT-2 (``quantize_dynamic({nn.Linear})``
quantizes only ``lm_head``). Swapping each Conv1D for an equivalent Linear with the transposed
weight makes the model's layers visible to them; ``assert_equivalent`` proves nothing changed.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def conv1d_to_linear(module: Conv1D) -> nn.Linear:
    """An ``nn.Linear`` computing exactly what ``module`` computes."""
    n_in, n_out = module.weight.shape  # Conv1D stores (in, out)
    linear = nn.Linear(n_in, n_out, bias=module.bias is not None,
                       device=module.weight.device, dtype=module.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(module.weight.t())
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear


def normalize_conv1d(model: nn.Module) -> int:
    """Replace every ``Conv1D`` in ``model`` (in place) by an equivalent ``nn.Linear``.

    Returns:
        How many modules were replaced.
    """
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, Conv1D)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, conv1d_to_linear(mod))
    return len(targets)

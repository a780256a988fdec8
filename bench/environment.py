"""A minimal environment record (versions, threads, machine) saved with every result."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import torch

PACKAGES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime-gpu", "torch-pruning",
            "sacrebleu", "rouge-score", "pandas")


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op thread count (default: all cores) and return it."""
    n = threads or os.cpu_count() or 1
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


def capture() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "packages": versions,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda_runtime"] = torch.version.cuda
    return env

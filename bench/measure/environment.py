"""The environment record saved with every result: machine, threads, versions, source, seeds,
and a measured memory bandwidth (decode is bandwidth-bound: weight bytes / bandwidth is the
floor a decode step cannot beat)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from slimbench.errors import UsageError
from slimbench.schema.environment import Cpu, Environment, Git, Gpu
from slimbench.versions import package_versions

PACKAGES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime-gpu", "onnxruntime",
            "torch-pruning", "sacrebleu", "rouge-score", "pandas", "numpy", "openvino", "nncf",
            "ctranslate2", "onnxruntime-genai-cuda", "onnxruntime-genai")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
             "amx_bf16", "amx_int8")


MAX_THREADS = 4096  # beyond any machine; torch overflows on absurd values


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op thread count (default: all cores) and return it."""
    n = threads or os.cpu_count() or 1
    if not 1 <= n <= MAX_THREADS:  # a user's number (--threads, a suite's): one line
        raise UsageError(f"threads must be in [1, {MAX_THREADS}], got {n}")
    torch.set_num_threads(n)
    return n


def cpu_info() -> Cpu:
    """CPU model and the instruction-set flags that change int8/bf16 kernel speed."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return Cpu(model=model, cores=os.cpu_count(),
               flags={f: f in flags for f in CPU_FLAGS} if flags else None)


def ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def git_state() -> Git:
    """Commit and dirty flag of the slimbench checkout in use (None for an installed wheel)."""
    root = Path(__file__).resolve().parents[2]  # the checkout: bench/measure/ is two below
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip() != ""
        return Git(commit=commit, dirty=dirty)
    except (OSError, subprocess.SubprocessError):
        return Git()


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Host memory copy bandwidth in bytes/s (best of ``repeats`` copies; read + write counted).

    A short copy test rather than STREAM: it is what a decode step does to its weights
    (stream them through the cores once), and it takes well under a second.
    """
    import numpy as np

    src = np.ones(megabytes * (1 << 20) // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def gpu_info() -> Gpu | None:
    """The first CUDA GPU (None without one); its driver where NVML is importable."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    driver = None
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # NVML absent: the driver stays unknown rather than guessed
        pass
    return Gpu(name=props.name, memory_bytes=props.total_memory,
               capability=f"{props.major}.{props.minor}", cuda_runtime=torch.version.cuda,
               count=torch.cuda.device_count(), driver=driver)


def capture(bandwidth: bool = False, seeds: dict[str, int] | None = None) -> Environment:
    """This process's environment now (threads as set); ``bandwidth`` adds a measured
    memory bandwidth (under a second); ``seeds``: the seeds the figures use."""
    return Environment(
        python=sys.version.split()[0], platform=platform.platform(),
        processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
        cpu=cpu_info(), ram_bytes=ram_bytes(), torch_threads=torch.get_num_threads(),
        packages=package_versions(PACKAGES), cuda_available=torch.cuda.is_available(),
        gpu=gpu_info(), git=git_state(), seeds=dict(seeds or {}),
        # other work on the machine: with 2 busy threads per core, torch's OpenMP spin-waits
        # can make a CPU figure many times slower, so a loaded machine must show in the result
        load_average_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        memory_bandwidth_bytes_per_s=memory_bandwidth() if bandwidth else None)

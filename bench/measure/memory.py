"""One memory taxonomy for every cell. Each field is defined once, in the results schema
(``slimbench/schema/measurements.py``, ``Memory``; ``FIELDS`` here), and the table of
docs/measurements.md is checked against it by a test. The functions here return that
``Memory`` record.

Peak RSS is the kernel's high-water mark for the process (VmHWM), which is why every cell runs
in its own process: a shared process would report the largest model it ever loaded.
"""

from __future__ import annotations

import dataclasses
import resource

from slimbench.schema.codec import field_docs
from slimbench.schema.measurements import Memory

# name -> description of every memory field: the results schema's ``Memory`` type is where each
# is defined (one place for the measurement, the results file and the table)
FIELDS = field_docs(Memory)


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def process_memory() -> Memory:
    """Host-side memory of this process: ``peak_rss_bytes`` and ``rss_bytes``."""
    peak = _status_bytes("VmHWM")
    if peak is None:  # not Linux: ru_maxrss is kB on Linux, bytes on macOS
        import sys

        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return Memory(peak_rss_bytes=peak, rss_bytes=_status_bytes("VmRSS"))


def cuda_memory(device_index: int = 0) -> Memory:
    """torch's CUDA peaks and, where NVML is importable, this process's GPU memory (the
    ``cuda_*`` and ``gpu_process_bytes`` fields; the others null)."""
    import torch

    if not torch.cuda.is_available():
        return Memory()
    out = Memory(cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(device_index),
                 cuda_max_reserved_bytes=torch.cuda.max_memory_reserved(device_index))
    try:
        import os

        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid():
                out = dataclasses.replace(out, gpu_process_bytes=int(proc.usedGpuMemory))
    except Exception:  # NVML absent or unsupported (containers): the field stays absent
        pass
    return out


def snapshot(info=None, device: str = "cpu") -> Memory:
    """Every memory field that applies: process, CUDA (on a CUDA device) and the model's
    (``info``: the loader's ``Artifact``); null where one does not apply."""
    out = process_memory()
    if device.startswith("cuda"):
        gpu = cuda_memory(int(device.partition(":")[2] or 0))
        out = dataclasses.replace(out, cuda_max_allocated_bytes=gpu.cuda_max_allocated_bytes,
                                  cuda_max_reserved_bytes=gpu.cuda_max_reserved_bytes,
                                  gpu_process_bytes=gpu.gpu_process_bytes)
    if info is not None:
        out = dataclasses.replace(out, model_bytes_on_disk=info.bytes_on_disk,
                                  parameters=info.parameters,
                                  nonzero_parameters=info.nonzero_parameters)
    return out

"""The environment fingerprint: what must match for two figures to be compared.

Latency and memory only compare between matching fingerprints: the same CPU model, the same
instruction-set features that select kernels, the same threads, the same GPU and the same
versions of the libraries whose kernels run. Quality is deterministic for an artifact on one
machine, but int8 kernels differ between AVX2, AVX-512 VNNI and AMX (ONNX Runtime's MLAS picks
its kernel by CPU), so a quality comparison across such a change is marked as one.

A fingerprint is computed from the ``environment`` record every cell and comparison saves
(``bench/measure/environment.capture``: the typed ``Environment`` of
``slimbench/schema/environment.py``), so it needs nothing but that record.
"""

from __future__ import annotations

from slimbench.schema.environment import Cpu, Environment

# CPU features that change which int8 / bf16 kernel runs (torch's oneDNN/FBGEMM, ORT's MLAS)
KERNEL_ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
              "amx_int8", "amx_bf16")
# libraries whose kernels run during a measurement
KERNEL_PACKAGES = ("torch", "onnxruntime-gpu", "onnxruntime", "transformers")
# an engine's own libraries, held only for the cells that run on it: a torch cell's figures do
# not change with OpenVINO's version (and a baseline made before the engine was installed
# stays comparable)
ENGINE_PACKAGES = {"openvino": ("openvino", "nncf"), "ctranslate2": ("ctranslate2",),
                   "genai": ("onnxruntime-genai-cuda", "onnxruntime-genai")}


def fingerprint(env: Environment | dict | None, backend: str | None = None) -> dict | None:
    """``{"cpu", "isa", "threads", "gpu", "packages"}`` of an environment (None for none: a
    figure with no environment cannot be shown comparable); ``packages`` holds the engine's
    own libraries too for a figure measured on ``backend`` (``ENGINE_PACKAGES``).

    ``env`` is the typed record or the mapping a document holds; a mapping is read with
    ``Environment.read``, which takes what fits of a record of any age or shape. The
    fingerprint is a plain mapping: it is what ``results.json`` records per cell.
    """
    record = Environment.read(env)
    if record is None:
        return None
    cpu = record.cpu or Cpu()
    flags = cpu.flags or {}
    return {"cpu": cpu.model or record.processor,
            "isa": sorted(f for f in KERNEL_ISA if flags.get(f)),
            "threads": record.torch_threads,
            "gpu": record.gpu.name if record.gpu else None,
            "packages": {p: record.packages.get(p)
                         for p in KERNEL_PACKAGES + ENGINE_PACKAGES.get(backend, ())
                         if record.packages.get(p)}}


def differences(a: dict | None, b: dict | None) -> list[str]:
    """What differs between two fingerprints, one short text each (empty: comparable), e.g.
    ``isa: +avx512_vnni``, ``threads: 2 -> 4``. A missing fingerprint is a difference (the
    caller decides what an unknown environment means)."""
    if a is None or b is None:
        return ["no environment recorded"]
    out = []
    for key in ("cpu", "threads", "gpu"):
        if a.get(key) != b.get(key):
            out.append(f"{key}: {a.get(key)} -> {b.get(key)}")
    isa_a, isa_b = set(a.get("isa") or ()), set(b.get("isa") or ())
    if isa_a != isa_b:
        out.append("isa: " + " ".join([f"+{f}" for f in sorted(isa_b - isa_a)]
                                      + [f"-{f}" for f in sorted(isa_a - isa_b)]))
    pa, pb = a.get("packages") or {}, b.get("packages") or {}
    out += [f"{p}: {pa.get(p)} -> {pb.get(p)}" for p in sorted(set(pa) | set(pb))
            if pa.get(p) != pb.get(p)]
    return out


def kernel_differences(a: dict | None, b: dict | None) -> list[str]:
    """The differences that can change a model's outputs (ISA, GPU, library versions), not
    only its speed (CPU model, threads)."""
    return [d for d in differences(a, b)
            if not d.startswith(("cpu:", "threads:", "no environment"))]

"""The environment record: the machine, threads, versions, source and seeds a figure comes
from (``bench/measure/environment.capture`` makes it; ``slimbench/fingerprint.py`` reads it).

Documents keep it as the plain mapping it is written as (``CellResult.environment``): the
record is open (a Ray run adds ``executor``; a later slimbench may add keys), and a reader
must not refuse a file for a key it does not know. ``Environment.from_dict`` checks every field
it knows and keeps the others in ``extra``, so ``to_dict`` writes back exactly what was read;
``Environment.read`` is the tolerant reader of a record of any age or shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from slimbench.schema.codec import SchemaError, Typed, decode


@dataclasses.dataclass(frozen=True)
class Cpu(Typed):
    """The CPU.

    Attributes:
        model: the model name (/proc/cpuinfo's "model name"; else the platform's processor).
        cores: logical CPUs (os.cpu_count).
        flags: per instruction-set feature that changes int8/bf16 kernel speed (avx2,
            avx512_vnni, amx_tile, ...), whether this CPU has it; null where unknown.
    """

    model: str | None = None
    cores: int | None = None
    flags: dict[str, bool] | None = None


@dataclasses.dataclass(frozen=True)
class Gpu(Typed):
    """The first CUDA GPU.

    Attributes:
        name: the device name, e.g. NVIDIA H100 80GB HBM3.
        memory_bytes: its total memory.
        capability: its compute capability, e.g. "9.0".
        cuda_runtime: the CUDA version torch was built with.
        count: CUDA devices visible.
        driver: the NVIDIA driver version (null without NVML).
    """

    name: str
    memory_bytes: int
    capability: str
    cuda_runtime: str | None
    count: int
    driver: str | None = None


@dataclasses.dataclass(frozen=True)
class Git(Typed):
    """The slimbench checkout in use.

    Attributes:
        commit: HEAD's commit (null for an installed wheel).
        dirty: whether tracked files differ from it (null where unknown).
    """

    commit: str | None = None
    dirty: bool | None = None


@dataclasses.dataclass(frozen=True)
class Executor(Typed):
    """Where a cell ran when an executor other than the local one ran it (Ray).

    Attributes:
        name: the executor ("ray").
        node_id: the Ray node's id.
        node_ip: the node's address.
        hostname: the node's host name.
        worker_pid: the Ray worker's process id.
        slimbench: slimbench's version on the node.
        started_at: when the task started holding its resources (UTC, ISO 8601, the node's
            clock); null until known.
        ended_at: when it stopped holding them; null until known.
    """

    name: str
    node_id: str
    node_ip: str
    hostname: str
    worker_pid: int
    slimbench: str
    started_at: str | None = None
    ended_at: str | None = None


@dataclasses.dataclass
class Environment:
    """The environment of a measurement.

    Attributes:
        python: the Python version.
        platform: platform.platform().
        processor: platform.processor() (or the machine type).
        cpu_count: logical CPUs.
        cpu: the CPU model and its kernel-selecting features.
        ram_bytes: total memory (null where unknown).
        torch_threads: torch's intra-op threads when the figures were taken.
        packages: per package, its installed version (null: not installed).
        cuda_available: whether torch sees a CUDA GPU.
        gpu: the first GPU, or null.
        git: the checkout's commit.
        seeds: the seeds the figures used, by what they seeded.
        load_average_1m: the 1-minute load average (other work on the machine).
        memory_bandwidth_bytes_per_s: measured host copy bandwidth; absent unless measured.
        executor: where a Ray executor ran the cell; absent for local runs.
        extra: keys of the record this version does not know (written back as they were).
    """

    python: str | None = None
    platform: str | None = None
    processor: str | None = None
    cpu_count: int | None = None
    cpu: Cpu | None = None
    ram_bytes: int | None = None
    torch_threads: int | None = None
    packages: dict[str, str | None] = dataclasses.field(default_factory=dict)
    cuda_available: bool | None = None
    gpu: Gpu | None = None
    git: Git | None = None
    seeds: dict[str, int] = dataclasses.field(default_factory=dict)
    load_average_1m: float | None = None
    memory_bandwidth_bytes_per_s: float | None = None
    executor: Executor | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # written only when present: records without them (no bandwidth measured, a local run)
    # have no such key, not a null
    OPTIONAL = ("memory_bandwidth_bytes_per_s", "executor")

    def to_dict(self) -> dict:
        """The plain record as written (``capture``'s keys in their order; ``extra`` last)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or f.name in self.OPTIONAL and value is None:
                continue
            out[f.name] = value.to_dict() if isinstance(value, Typed) else (
                dict(value) if isinstance(value, dict) else value)
        return out | self.extra

    @classmethod
    def _known(cls) -> dict[str, Any]:
        import typing

        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "extra"}

    @classmethod
    def from_dict(cls, data: dict, path: str = "environment") -> Environment:
        """The typed record of ``data``: every known field checked (unknown keys go to
        ``extra``).

        Raises:
            SchemaError: the first known field that does not fit.
        """
        if not isinstance(data, dict):
            raise SchemaError(path, "a mapping", data)
        known = cls._known()
        kwargs = {k: decode(hint, data[k], f"{path}.{k}") for k, hint in known.items()
                  if k in data}
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, data) -> Environment | None:
        """A record of any age or shape, tolerated: None for anything but a non-empty
        mapping; a field that does not fit is left out (kept in ``extra``); the oldest
        records' forms are understood (``cpu`` as the model's name, ``threads`` for
        ``torch_threads``)."""
        if isinstance(data, Environment):
            return data
        if not isinstance(data, dict) or not data:
            return None
        data = dict(data)
        if isinstance(data.get("cpu"), str):
            data["cpu"] = {"model": data["cpu"]}
        if "torch_threads" not in data and "threads" in data:
            data["torch_threads"] = data.pop("threads")
        known, kwargs, extra = cls._known(), {}, {}
        for key, value in data.items():
            if key not in known:
                extra[key] = value
                continue
            try:
                kwargs[key] = decode(known[key], value, key)
            except SchemaError:
                extra[key] = value
        return cls(**kwargs, extra=extra)

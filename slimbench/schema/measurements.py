"""The parts of a result document (``slimbench/schema/documents.py``): timed measurements, latency
scenarios, memory figures, quality scores and fidelity."""

from __future__ import annotations

import dataclasses
from typing import Literal

from slimbench.schema.codec import Typed

Interval = tuple[float, float]


@dataclasses.dataclass
class Measurement(Typed):
    """One timed figure: the statistics of repeated samples.

    Attributes:
        name: what was measured, e.g. decode_ms_per_token; with the scenario's tag it names
            the results row (decode_ms_per_token@128).
        unit: unit of every statistic (ms, tok/s).
        higher_is_better: the figure's direction, which the gate follows.
        median: median of the samples.
        ci95: percentile-bootstrap 95% interval of the median, or null.
        n: number of samples.
        cv: coefficient of variation (stdev / mean).
        mean: mean of the samples.
        p90: 90th percentile.
        p99: 99th percentile.
        stdev: sample standard deviation.
        min: smallest sample.
        max: largest sample.
        warnings: why this figure may not be trusted (high variation).
    """

    name: str
    unit: str
    higher_is_better: bool
    median: float
    ci95: Interval | None
    n: int
    cv: float
    mean: float | None = None
    p90: float | None = None
    p99: float | None = None
    stdev: float | None = None
    min: float | None = None
    max: float | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Scenario(Typed):
    """One latency scenario as run: its parameters and its named measurements.

    Attributes:
        scenario: prefill, decode (per token, with a KV cache) or generate (end to end).
        tag: what follows "@" in the results rows of its measurements: the prompt or context
            length, and "x<batch>" for a batch above 1.
        params: the scenario's parameters (seq_len, batch, context, prompt_len, new_tokens,
            repeats).
        measurements: the timed figures; each becomes one results row.
        derived: figures computed from the medians, not timed themselves (throughput of a
            batch, the decode step's memory-bandwidth floor).
    """

    scenario: Literal["prefill", "decode", "generate"]
    tag: str
    params: dict[str, int]
    measurements: list[Measurement]
    derived: dict[str, float] = dataclasses.field(default_factory=dict)

    def measurement(self, name: str) -> Measurement:
        """The measurement called ``name``."""
        found = [m for m in self.measurements if m.name == name]
        if not found:
            raise KeyError(f"{self.scenario}@{self.tag} has no measurement {name!r}")
        return found[0]


@dataclasses.dataclass(frozen=True)
class Placement(Typed):
    """Where an ONNX graph's nodes ran (ONNX Runtime's profiler on one prefill).

    Attributes:
        primary: the session's first execution provider (CUDA on a GPU).
        nodes_by_provider: per execution provider, the nodes it ran.
        fallback_nodes: nodes that ran on a provider other than the primary, often with
            copies around them.
        fallback_ops: per operator type, its nodes that fell back.
    """

    primary: str
    nodes_by_provider: dict[str, int]
    fallback_nodes: int
    fallback_ops: dict[str, int]


@dataclasses.dataclass
class Latency(Typed):
    """A cell's latency scenarios and how they were configured.

    Attributes:
        config: the latency configuration (LatencyConfig) as run.
        scenarios: every scenario, in the order run.
        placement: ONNX Runtime only: which execution provider ran how many nodes.
    """

    config: dict
    scenarios: list[Scenario]
    placement: Placement | None = None


@dataclasses.dataclass
class Memory(Typed):
    """Memory and size figures of a cell; null where a figure does not apply. Each is defined
    once, here: ``bench/measure/memory.py`` measures these fields (its ``FIELDS`` are these
    descriptions) and the results table makes one row of each.

    Attributes:
        peak_rss_bytes: peak resident set size of the cell's process (Linux VmHWM /
            ru_maxrss): weights, activations, runtime arenas and the Python interpreter
        rss_bytes: resident set size of the cell's process when the figure was taken
        cuda_max_allocated_bytes: torch.cuda.max_memory_allocated: peak bytes in live torch
            tensors on the GPU (torch backend only)
        cuda_max_reserved_bytes: torch.cuda.max_memory_reserved: peak bytes held by torch's
            caching allocator, freed tensors included
        gpu_process_bytes: GPU memory used by the cell's process according to NVML (any
            backend; ONNX Runtime's CUDA arena included); absent without NVML
        model_bytes_on_disk: bytes of the artifact's weight files (safetensors or ONNX +
            external data)
        parameters: parameter count (tied weights once)
        nonzero_parameters: parameters that are not exactly zero (what sparsity removed)
    """

    peak_rss_bytes: int | None = None
    rss_bytes: int | None = None
    cuda_max_allocated_bytes: int | None = None
    cuda_max_reserved_bytes: int | None = None
    gpu_process_bytes: int | None = None
    model_bytes_on_disk: int | None = None
    parameters: int | None = None
    nonzero_parameters: int | None = None

    # what the model is rather than what running it took: deterministic for an artifact, so
    # the gate holds them to the tighter "size" allowance
    SIZE_FIELDS = ("model_bytes_on_disk", "parameters", "nonzero_parameters")

    @classmethod
    def kind(cls, field: str) -> str:
        """The results table's kind of a field: "size" or "memory"."""
        return "size" if field in cls.SIZE_FIELDS else "memory"

    @staticmethod
    def unit(field: str) -> str:
        """The unit of a field: bytes ("B") or a count ("")."""
        return "B" if "bytes" in field else ""


@dataclasses.dataclass
class Score(Typed):
    """One quality metric: a point estimate and its bootstrap interval.

    Attributes:
        value: the metric over every example.
        ci95: percentile-bootstrap 95% interval, or null (no resamples).
        higher_is_better: the metric's direction, which the gate follows.
        resamples: bootstrap resamples behind the interval (0: none).
        seed: the bootstrap's seed.
        resampled: what the bootstrap resampled (texts, prompts; null: examples).
        info: what the scorer reports about itself (sacrebleu signature, stemmer, KL
            direction).
    """

    value: float
    ci95: Interval | None
    higher_is_better: bool
    resamples: int = 0
    seed: int | None = None
    resampled: str | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_metric(cls, metric: dict) -> Score:
        """From a task's per-metric mapping; keys this type does not name go to ``info``."""
        known = {f.name for f in dataclasses.fields(cls)} - {"info"}
        return cls.from_dict({k: v for k, v in metric.items() if k in known}
                             | {"info": {k: v for k, v in metric.items() if k not in known}})


@dataclasses.dataclass
class QualityScore(Typed):
    """One task's scores on the very runtime that was timed.

    Attributes:
        task: the task's name.
        version: the task definition's version.
        metric: the headline metric, one of metrics.
        value: the headline metric's value (a copy of metrics[metric].value).
        ci95: the headline metric's 95% interval.
        higher_is_better: the headline metric's direction.
        metrics: every metric of the task.
        n: examples scored.
        seconds: wall time of the task.
        examples_file: the per-example outputs (JSON lines, each with a "task"), relative to
            this document's folder; null when none were written.
        dataset: where the examples came from.
        scores: plain metric values and scorer details.
        protocol: how the examples were run (batch size, windows, generation settings).
        task_spec: the task definition as run.
    """

    task: str
    version: str
    metric: str
    value: float
    ci95: Interval | None
    higher_is_better: bool
    metrics: dict[str, Score]
    n: int
    seconds: float
    examples_file: str | None = None
    dataset: str | None = None
    scores: dict = dataclasses.field(default_factory=dict)
    protocol: dict = dataclasses.field(default_factory=dict)
    task_spec: dict = dataclasses.field(default_factory=dict)

    def check(self):
        if self.metric not in self.metrics:
            return "metric", f"one of metrics ({', '.join(self.metrics)})", self.metric
        return None

    @classmethod
    def from_task(cls, result: dict, examples_file: str | None = None) -> QualityScore:
        """From ``tasks.generation.run_task``'s result (its ``examples`` stay out: they go to
        the per-example file)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"metrics", "examples_file"}
        data = {k: v for k, v in result.items() if k in known}
        data["metrics"] = {k: Score.from_metric(m).to_dict()
                           for k, m in result["metrics"].items()}
        return cls.from_dict(data | {"examples_file": examples_file})


@dataclasses.dataclass
class Fidelity(Typed):
    """A model's agreement with a baseline model on the perplexity text (``eval --baseline``).

    Attributes:
        baseline: the baseline's model spec.
        metrics: top1_agreement, kl_nats (KL(baseline || variant)) and greedy_exact_match.
        positions: token positions compared.
        windows: text windows compared.
        prompts: greedy-generation prompts compared.
        protocol: the fidelity configuration as run.
        seconds: wall time.
    """

    baseline: str
    metrics: dict[str, Score]
    positions: int
    windows: int
    prompts: int
    protocol: dict
    seconds: float

    @classmethod
    def from_fidelity(cls, result: dict) -> Fidelity:
        """From ``tasks.fidelity.fidelity``'s result plus its ``baseline``."""
        scalars = {k: v for k, v in result.items() if not isinstance(v, dict)}
        metrics = {k: Score.from_metric(v).to_dict() for k, v in result.items()
                   if isinstance(v, dict) and "value" in v}
        return cls.from_dict(scalars | {"metrics": metrics, "protocol": result["protocol"]})

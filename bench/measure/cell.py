"""One latency cell: an artifact on a backend and device, its scenarios, memory and environment,
as the results schema's ``CellResult`` (``slimbench/schema/documents.py``).

``latency_cell`` and ``suite_cell`` return typed records (``CellResult``, ``CellOutput``),
which ``run_isolated("slimbench.bench.measure.cell:latency_cell", ...)`` carries back from the
cell's own process through its pipe (pickled); called directly they work the same (tests,
notebooks).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from slimbench.errors import UsageError
from slimbench.schema import CellInfo, CellResult, Environment, Latency, Memory
from slimbench.tasks.protocol import CausalLM

LISTS = ("prefill", "decode_contexts", "batches", "generate_batches")  # lists of positive ints


def check_positions(spec: str, max_length: int, scenario: str, length: int,
                    new_tokens: int) -> None:
    """Refuse a scenario whose tokens the model has no positions for, before any work (run
    anyway, the model's position lookup fails deep inside: ``IndexError: index out of range``).

    Args:
        scenario: prefill (``length`` prompt tokens), decode (a ``length``-token context and
            ``new_tokens`` steps) or generate (a ``length``-token prompt and ``new_tokens``).
    """
    grows = scenario != "prefill"
    tokens = length + (new_tokens if grows else 0)
    if tokens > max_length:
        raise UsageError(f"{spec}: {scenario} needs {tokens} positions (length {length}"
                         + (f" + {new_tokens} new tokens" if grows else "")
                         + f"), the model has {max_length}")


def _written_as_text(items) -> str:
    """A hint for a number that YAML read as text: YAML 1.1 takes ``1e9`` (no dot) for a
    string, so the value is right but its spelling is not."""
    for v in items:
        try:
            number = float(v) if isinstance(v, str) else None
        except ValueError:
            continue
        if number is not None and math.isfinite(number):
            return f" (write {int(number) if number.is_integer() else number!r})"
    return ""


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    """Args:
        prefill: prompt lengths for prefill latency.
        decode_contexts: context lengths for per-token decode latency.
        new_tokens: tokens per decode / generate repeat (min = max, no early stop).
        generate_prompt: prompt length of the end-to-end generate scenario (0 = skip it).
        batches: batch sizes for the prefill batch sweep (empty = skip it).
        generate_batches: batch sizes for the generate batch sweep (empty = skip it): the
            generate scenario at ``generate_prompt`` with that many equal-length prompts, rows
            ``tokens_per_s@<prompt>x<batch>`` etc.; batch 1 is the generate scenario itself.
        repeats: minimum decode / generate rounds after one warm-up.
        min_seconds: minimum timed duration of each figure (prefill, decode, generate): the
            longer the window, the less a shared host's passing state moves the median.
    """

    prefill: tuple[int, ...] = (128,)
    decode_contexts: tuple[int, ...] = (128,)
    new_tokens: int = 32
    generate_prompt: int = 128
    batches: tuple[int, ...] = ()
    generate_batches: tuple[int, ...] = ()
    repeats: int = 5
    min_seconds: float = 1.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            items = value if isinstance(value, tuple | list) else [value]
            if not isinstance(value, tuple | list) and f.name in LISTS:
                raise UsageError(f"latency.{f.name} must be a list of lengths, got {value!r}")
            numeric = int | float if f.name == "min_seconds" else int
            if any(isinstance(v, bool) or not isinstance(v, numeric) for v in items):
                what = ("a number" if f.name == "min_seconds" else
                        "integers" if isinstance(value, tuple | list) else "an integer")
                raise UsageError(f"latency.{f.name} must be {what}, got {value!r}"
                                 + _written_as_text(items))
        if self.new_tokens < 2 or self.repeats < 1 or self.min_seconds < 0:
            raise UsageError("new_tokens must be >= 2, repeats >= 1 and min_seconds >= 0")
        for name in LISTS:
            if any(int(v) < 1 for v in getattr(self, name)):
                raise UsageError(f"{name} values must be >= 1")
        if self.generate_batches and not self.generate_prompt:
            raise UsageError("latency.generate_batches needs latency.generate_prompt > 0: the "
                             "sweep generates from prompts of that length")
        if len(set(self.generate_batches)) != len(self.generate_batches):
            # two scenarios with one tag would give two results rows of the same name
            raise UsageError(f"latency.generate_batches must not repeat a batch size, got "
                             f"{list(self.generate_batches)!r}")

    def check_positions(self, spec: str, max_length: int) -> None:
        """Every scenario of this config fits the model's ``max_length`` positions (the batch
        sweeps take the lengths of prefill and generate)."""
        lengths = ([("prefill", n) for n in self.prefill]
                   + [("decode", c) for c in self.decode_contexts]
                   + ([("generate", self.generate_prompt)] if self.generate_prompt else []))
        for scenario, length in lengths:
            check_positions(spec, max_length, scenario, length, self.new_tokens)


def require_tokenizer(loaded) -> None:
    """Quality tasks need the model's tokenizer: refuse one without, naming what is missing
    where (the tasks themselves only see that there is none)."""
    from slimbench.compress.loader import TOKENIZER_FILES

    if loaded.tokenizer is not None:
        return
    info = loaded.info
    if info.random_weights:
        why = "a random-weight shape has none (and no quality to measure)"
    elif info.path and Path(info.path).is_dir():
        why = (f"the folder {info.path} holds none of {', '.join(TOKENIZER_FILES)}: copy the "
               "tokenizer files of the model it came from beside its weights")
    else:
        why = "transformers could not load one for it (-v says why)"
    raise UsageError(f"{info.spec}: quality tasks need a tokenizer, and {why}")


def scoring_runtime(artifact: str, device: str, threads: int | None):
    """A loaded artifact (``LoadedModel``: its ``info`` and tokenizer) and the runtime that
    scores it, as a suite cell makes them: what a caller above this layer (the recipe search)
    scores tasks on without a runtime of its own."""
    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import LoadOptions, load_artifact

    loaded = load_artifact(artifact, LoadOptions(device=device))
    require_tokenizer(loaded)
    return loaded, make_runtime(loaded, threads=threads)


def latency_cell(model: str, device: str = "cpu", threads: int | None = None,
                 config: dict | None = None, dtype: str | None = None) -> CellResult:
    """Load ``model`` and measure the configured scenarios: an ok ``CellResult`` named after
    the model."""
    from slimbench.bench.measure import environment
    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import LoadOptions, load_artifact

    cfg = LatencyConfig(**(config or {}))
    n_threads = environment.set_threads(threads)
    loaded = load_artifact(model, LoadOptions(device=device, dtype=dtype))
    rt = make_runtime(loaded, threads=n_threads)
    result = _cell_result(rt, loaded, device, n_threads)
    return measure_latency(rt, loaded, cfg, device).into(result)


def _cell_result(rt: CausalLM, loaded, device: str, threads: int) -> CellResult:
    """An ok cell of what was loaded, named after it (the runner names suite cells)."""
    info = loaded.info
    cell = CellInfo(id=f"{info.spec}--{device.replace(':', '')}", variant=info.spec,
                    model=info.spec, recipe=list(info.recipe), device=device,
                    backend=rt.backend, artifact=info.spec)
    return CellResult(cell=cell, status="ok", threads=threads,
                      artifact=info)


@dataclasses.dataclass(frozen=True)
class CellMeasurements:
    """What ``measure_latency`` measured on one runtime: those fields of a ``CellResult``.

    Attributes:
        latency: the scenarios, their configuration and (ORT) the graph's placement.
        memory: the memory and size figures.
        environment: the environment, with the measured memory bandwidth.
        warnings: what makes a figure doubtful (high variation, fallback nodes).
    """

    latency: Latency
    memory: Memory
    environment: Environment
    warnings: list[str]

    def into(self, result: CellResult) -> CellResult:
        """``result`` with these fields (the environment as the plain record a cell holds)."""
        return dataclasses.replace(result, latency=self.latency, memory=self.memory,
                                   environment=self.environment.to_dict(),
                                   warnings=list(self.warnings))


def measure_latency(rt: CausalLM, loaded, cfg: LatencyConfig, device: str) -> CellMeasurements:
    """Scenarios, memory, environment (with bandwidth) and warnings for one runtime."""
    from slimbench.bench.measure import environment, memory, scenarios

    cfg.check_positions(loaded.info.spec, rt.max_length)  # before minutes of other scenarios
    results = [scenarios.prefill_latency(rt, n, min_seconds=cfg.min_seconds)
               for n in cfg.prefill]
    results += [scenarios.decode_latency(rt, c, cfg.new_tokens, cfg.repeats,
                                         min_seconds=cfg.min_seconds)
                for c in cfg.decode_contexts]
    # what the engine cannot time is declared and reported n/a, never imitated
    limit, why = getattr(rt, "stepped_batch_limit", None), getattr(rt, "stepped_batch_why", "")
    not_timed = []

    def timed(batches, what: str) -> tuple[int, ...]:
        kept = tuple(b for b in batches if limit is None or b <= limit)
        not_timed.extend(f"{what}x{b}: n/a: {why}" for b in batches if b not in kept)
        return kept

    if cfg.generate_prompt:
        # batch 1 is the plain generate scenario (tag "64"); each further batch of the sweep
        # adds one tagged "64x8", so the batch-1 point is measured once, whatever the sweep
        batches = timed(tuple(dict.fromkeys((1, *cfg.generate_batches))),
                        f"generate@{cfg.generate_prompt}")
        results += scenarios.generate_sweep(rt, cfg.generate_prompt, batches, cfg.new_tokens,
                                            cfg.repeats, min_seconds=cfg.min_seconds)
    kept = timed(tuple(cfg.batches), f"prefill@{cfg.prefill[0]}") if cfg.batches else ()
    if kept:
        results += scenarios.batch_sweep(rt, cfg.prefill[0], kept, cfg.min_seconds)
    env = environment.capture(bandwidth=True, seeds={"inputs": 0})
    weights = loaded.info.bytes_on_disk
    if weights and device == "cpu":
        # a decode step streams every weight once: bytes / bandwidth is its floor
        floor_ms = weights / env.memory_bandwidth_bytes_per_s * 1e3
        for s in results:
            if s.scenario == "decode":
                s.derived["bandwidth_floor_ms"] = floor_ms
                s.derived["floor_fraction"] = floor_ms / s.measurement(
                    "decode_ms_per_token").median
    warnings = [f"{s.scenario}@{s.tag} {m.name}: {w}" for s in results for m in s.measurements
                for w in m.warnings] + not_timed
    placement = rt.placement()
    if placement and placement.fallback_nodes:
        warnings.append(f"{placement.fallback_nodes} ONNX nodes ran on a fallback "
                        f"provider: {placement.fallback_ops}")
    return CellMeasurements(latency=Latency(dataclasses.asdict(cfg), results, placement),
                            memory=memory.snapshot(loaded.info, device), environment=env,
                            warnings=warnings)


@dataclasses.dataclass(frozen=True)
class CellOutput:
    """What a suite cell's process hands back to the runner.

    Attributes:
        result: the cell's result (the runner names the cell and checks it).
        examples: the tasks' per-example outputs, each with its ``task``, which the runner
            writes beside the cell's file.
    """

    result: CellResult
    examples: list[dict]

    def to_dict(self) -> dict:
        """``{"result": the CellResult's plain values, "examples": [...]}``."""
        return {"result": self.result.to_dict(), "examples": self.examples}


def suite_cell(artifact: str, device: str, threads: int | None, latency: dict,
               tasks: list[str | dict], task_limit: int | None, quality: bool,
               perplexity_limit: int | None = None) -> CellOutput:
    """One suite cell: latency and (unless ``quality`` is off) every task, on one runtime, so
    the quality comes from the very artifact that was timed."""
    from slimbench.bench.measure import environment
    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import LoadOptions, load_artifact
    from slimbench.tasks.generation import run_entry
    from slimbench.tasks.specs import resolve_task

    cfg = LatencyConfig(**latency)
    n_threads = environment.set_threads(threads)
    loaded = load_artifact(artifact, LoadOptions(device=device))
    if quality and tasks:
        require_tokenizer(loaded)  # before minutes of latency that the failure would discard
    rt = make_runtime(loaded, threads=n_threads)
    result = _cell_result(rt, loaded, device, n_threads)
    result = measure_latency(rt, loaded, cfg, device).into(result)
    examples = []
    if quality:
        for task in tasks:
            spec = resolve_task(task)  # a task file is keyed by its name, never by its path
            limit = perplexity_limit if spec.kind == "perplexity" else task_limit
            if spec.kind == "lm_eval" and spec.limit is not None:
                limit = spec.limit  # the entry's own limit wins over the suite's
            for res in run_entry(rt, loaded.tokenizer, spec, limit):  # lm_eval: one per task
                examples += res.records()
                result.quality[res.score.task] = res.score
    return CellOutput(result, examples)

"""Latency scenarios, each defined once: its unit of work and its metrics.

A scenario's *unit* runs one piece of work on a runtime and returns its timings (seconds):
prefill, one forward over a prompt; decode, an untimed prefill and then k timed single-token
steps with the KV cache; generate, a greedy generation of n tokens. Its *metrics* say how each
figure derives from one unit's timings. A cell (``prefill_latency`` ... below) times units in
rounds and summarizes every sample; the paired A/B worker (``paired_worker.py``: ``compare``,
``gate --remeasure``, acceptance criteria) times the same units in trials and takes each
metric's mean per unit. So a metric added to a scenario here appears in both, by one name.

Inputs are deterministic (seeded token ids, ``prompt_tokens``) and token counts fixed, so two
runs of the same cell do the same work.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from slimbench.bench.measure.timing import measurement
from slimbench.registry import Registry
from slimbench.schema import Measurement, Scenario

if TYPE_CHECKING:  # numpy and torch stay out of the command line's start
    from slimbench.tasks.protocol import CausalLM

Clock = Callable[[float], float]  # seconds since a perf_counter() start, device work included


def prompt_tokens(vocab_size: int, n: int, batch: int = 1, seed: int = 0):
    """(batch, n) seeded torch int64 token ids in [0, vocab_size): the same prompt on every
    run, and nested (row 0 of every batch is the batch-1 prompt)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, n), generator=g)


def clock_of(rt: CausalLM) -> Clock:
    """The plain clock: synchronize inside the timed region, so queued device work counts."""
    def since(t0: float) -> float:
        rt.sync()
        return time.perf_counter() - t0
    return since


# ---- units of work: (rt, prompt (B, T), new_tokens, clock) -> timings ----------------------

@dataclasses.dataclass(frozen=True)
class PrefillTimings:
    """A prefill unit's timing.

    Attributes:
        forward: seconds of the forward over the prompt.
    """

    forward: float


@dataclasses.dataclass(frozen=True)
class DecodeTimings:
    """Timed decode steps.

    Attributes:
        steps: seconds of each single-token step, in order.
    """

    steps: list[float]


@dataclasses.dataclass
class GenerateTimings:
    """A greedy generation's timings.

    Attributes:
        ttft: seconds from the call to every row's first token (prefill + argmax).
        rest: seconds of the ``new_tokens - 1`` later steps (0 for one token).
        batch: rows generated.
        new_tokens: tokens generated per row.
        tokens: each step's (B, 1) greedy tokens, left on the device; None once dropped
            (``run_units`` keeps them for the last unit only).
    """

    ttft: float
    rest: float
    batch: int
    new_tokens: int
    tokens: list | None = None


Timings = PrefillTimings | DecodeTimings | GenerateTimings


def prefill_unit(rt: CausalLM, prompt, new_tokens: int = 0,
                 clock: Clock | None = None) -> PrefillTimings:
    """A generation's first step (``greedy_start``): one forward over the prompt with logits
    for the last position only (the output projection over every position is a scoring cost,
    ~30% of a gpt2-size prefill's FLOPs) and its greedy token. ``new_tokens`` is unused."""
    clock = clock or clock_of(rt)
    t0 = time.perf_counter()
    rt.greedy_start(prompt)
    return PrefillTimings(forward=clock(t0))


@dataclasses.dataclass
class DecodeState:
    """A decode under way: the last greedy tokens, what continues them and how many steps
    are done."""

    tokens: object
    past: object
    done: int = 0


def decode_start(rt: CausalLM, prompt) -> DecodeState:
    """The untimed prefill of a decode: the context's KV cache."""
    tokens, past = rt.greedy_start(prompt)
    rt.sync()
    return DecodeState(tokens, past)


def decode_steps(rt: CausalLM, state: DecodeState, steps: int,
                 clock: Clock | None = None) -> DecodeTimings:
    """``steps`` timed greedy single-token steps that continue ``state`` (updated in place)."""
    clock = clock or clock_of(rt)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state.tokens, state.past = rt.greedy_step(state.tokens, state.past)
        times.append(clock(t0))
    state.done += steps
    return DecodeTimings(steps=times)


def decode_unit(rt: CausalLM, prompt, new_tokens: int,
                clock: Clock | None = None) -> DecodeTimings:
    """An untimed prefill of the context, then ``new_tokens`` timed steps one by one, so the
    figure excludes time to first token and its percentiles are per token."""
    return decode_steps(rt, decode_start(rt, prompt), new_tokens, clock)


def generate_unit(rt: CausalLM, prompt, new_tokens: int,
                  clock: Clock | None = None) -> GenerateTimings:
    """Greedy generation of exactly ``new_tokens`` per row of ``prompt`` (no early stop):
    ``ttft`` from the call to every row's first token (prefill + argmax), ``rest`` for the
    ``new_tokens - 1`` later steps (each advances all rows). ``tokens``: the steps' (B, 1)
    tokens, left on the device (a copy inside the clock would be timed)."""
    clock = clock or clock_of(rt)
    rt.sync()  # nothing queued before may land in this unit's clock
    t0 = time.perf_counter()
    token, past = rt.greedy_start(prompt)
    tokens = [token]
    ttft = clock(t0)
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        token, past = rt.greedy_step(tokens[-1], past)
        tokens.append(token)
    rest = clock(t1) if new_tokens > 1 else 0.0
    return GenerateTimings(ttft=ttft, rest=rest, batch=prompt.shape[0], new_tokens=new_tokens,
                           tokens=tokens)


def tpot(t: GenerateTimings) -> float:
    """Seconds per decode step after the first token."""
    return t.rest / (t.new_tokens - 1)


def rate(t: GenerateTimings) -> float:
    """Tokens/s of all rows over the whole generation, ``B * n / (ttft + (n - 1) * tpot)``."""
    return t.batch * t.new_tokens / (t.ttft + t.rest)


# ---- the definitions -----------------------------------------------------------------------

@dataclasses.dataclass
class Metric:
    """One figure of a scenario: ``derive`` gives its samples (in ``unit``) from one unit's
    timings (decode: one per step; the others: one per unit)."""

    name: str
    unit: str
    derive: Callable[[Timings], list[float]]
    higher_is_better: bool = False


@dataclasses.dataclass
class ScenarioDef:
    """A scenario: its unit of work, its metrics, and the one a paired A/B decides on."""

    name: str
    unit: Callable[..., Timings]
    metrics: tuple[Metric, ...]
    primary: str

    def values(self, timings: Timings) -> dict[str, float]:
        """Each metric's mean over one unit (or one trial's steps): the paired worker's."""
        return {m.name: statistics.fmean(m.derive(timings)) for m in self.metrics}

    def measurements(self, runs: list[Timings]) -> list[Measurement]:
        """Each metric over every sample of the timed units ``runs``: a cell's."""
        return [measurement(m.name, m.unit, [x for t in runs for x in m.derive(t)], scale=1.0,
                            higher_is_better=m.higher_is_better) for m in self.metrics]


SCENARIOS: Registry[ScenarioDef] = Registry("scenario")
SCENARIOS.add("prefill", ScenarioDef("prefill", prefill_unit, (
    Metric("prefill_ms", "ms", lambda t: [t.forward * 1e3]),), "prefill_ms"),
    help="one forward over a prompt (logits for the last position)")
SCENARIOS.add("decode", ScenarioDef("decode", decode_unit, (
    Metric("decode_ms_per_token", "ms", lambda t: [s * 1e3 for s in t.steps]),),
    "decode_ms_per_token"), help="single-token steps with a KV cache after a context")
SCENARIOS.add("generate", ScenarioDef("generate", generate_unit, (
    Metric("ttft_ms", "ms", lambda t: [t.ttft * 1e3]),
    Metric("tpot_ms", "ms", lambda t: [tpot(t) * 1e3]),
    Metric("tokens_per_s", "tok/s", lambda t: [rate(t)], higher_is_better=True),
    Metric("generate_ms", "ms", lambda t: [(t.ttft + t.rest) * 1e3])), "generate_ms"),
    help="a whole greedy generation of new_tokens from a prompt")


# ---- cells: units in rounds ------------------------------------------------------------------

def _rounds(warmup: int, repeats: int, min_seconds: float, max_rounds: int = 100_000):
    """Round indices: ``warmup`` untimed rounds, then timed rounds until both ``repeats`` of
    them and ``min_seconds`` of wall time. A short window of a fast model (64 ms for 160 decode
    steps of the reference) catches whatever state the host is in for that instant; on a
    shared host that moves its median by 2x between runs, a window of seconds averages it."""
    i, start = 0, None
    while i < max_rounds:
        if i == warmup:
            start = time.perf_counter()
        if i >= warmup + repeats and time.perf_counter() - start >= min_seconds:
            return
        yield i
        i += 1


def run_units(scenario: str, rt: CausalLM, prompt, new_tokens: int, warmup: int,
              repeats: int, min_seconds: float, max_rounds: int = 100_000) -> list[Timings]:
    """The timings of a scenario's timed units, one per round of ``_rounds``. Only the last
    keeps its ``tokens`` (generate)."""
    defn = SCENARIOS.get(scenario)
    runs: list[Timings] = []
    for i in _rounds(warmup, repeats, min_seconds, max_rounds):
        t = defn.unit(rt, prompt, new_tokens)
        if i >= warmup:
            if runs and isinstance(runs[-1], GenerateTimings):
                runs[-1].tokens = None
            runs.append(t)
    return runs


def _tag(length: int, batch: int) -> str:
    return f"{length}" + (f"x{batch}" if batch > 1 else "")


def prefill_latency(rt: CausalLM, seq_len: int, batch: int = 1,
                    min_seconds: float = 1.0) -> Scenario:
    """Milliseconds for one prefill (``prefill_unit``) of ``batch x seq_len`` tokens: 3
    warm-up units, then at least 10 and ``min_seconds``."""
    runs = run_units("prefill", rt, prompt_tokens(rt.vocab_size, seq_len, batch), 0, 3, 10,
                     min_seconds, max_rounds=10_003)
    return Scenario("prefill", _tag(seq_len, batch), {"seq_len": seq_len, "batch": batch},
                    SCENARIOS.get("prefill").measurements(runs))


def decode_latency(rt: CausalLM, context: int, new_tokens: int = 32, repeats: int = 5,
                   warmup: int = 1, min_seconds: float = 0.0) -> Scenario:
    """Milliseconds per generated token with a KV cache after a ``context``-token prompt
    (``decode_unit``); units repeat until ``repeats`` of them and ``min_seconds``."""
    if context + new_tokens > rt.max_length:
        raise ValueError(f"context {context} + {new_tokens} tokens exceeds {rt.max_length}")
    runs = run_units("decode", rt, prompt_tokens(rt.vocab_size, context), new_tokens, warmup,
                     repeats, min_seconds)
    return Scenario("decode", f"{context}",
                    {"context": context, "new_tokens": new_tokens, "repeats": len(runs)},
                    SCENARIOS.get("decode").measurements(runs))


def _check_generate(rt: CausalLM, prompt_len: int, new_tokens: int) -> None:
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 to separate first-token and per-token time")
    if prompt_len + new_tokens > rt.max_length:
        raise ValueError(f"prompt {prompt_len} + {new_tokens} tokens exceeds {rt.max_length}")


@dataclasses.dataclass(frozen=True)
class GenerationRounds:
    """Timed rounds of a greedy generation (``timed_generation``).

    Attributes:
        ttft: per round, seconds to every row's first token.
        tpot: per round, seconds per decode step after the first token.
        rate: per round, tokens/s of all rows (``rate``).
        tokens: the last round's greedy tokens, (B, new_tokens) int64 numpy.
    """

    ttft: list[float]
    tpot: list[float]
    rate: list[float]
    tokens: object


def timed_generation(rt: CausalLM, prompt, new_tokens: int, repeats: int = 5,
                     warmup: int = 1, min_seconds: float = 0.0) -> GenerationRounds:
    """``generate_unit`` on ``prompt`` (B, T) in rounds as ``_rounds`` says."""
    import numpy as np

    _check_generate(rt, prompt.shape[1], new_tokens)
    runs = run_units("generate", rt, prompt, new_tokens, warmup, repeats, min_seconds)
    tokens = np.concatenate([_numpy(t) for t in runs[-1].tokens], axis=1).astype(np.int64)
    return GenerationRounds(ttft=[t.ttft for t in runs], tpot=[tpot(t) for t in runs],
                            rate=[rate(t) for t in runs], tokens=tokens)


def _numpy(x):
    """A backend's array (torch tensor on any device, or numpy) as numpy."""
    import numpy as np

    return x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x)


def generate_latency(rt: CausalLM, prompt_len: int, new_tokens: int = 32, repeats: int = 5,
                     warmup: int = 1, min_seconds: float = 0.0, batch: int = 1) -> Scenario:
    """End-to-end greedy generation (``generate_unit``) for ``batch`` equal-length seeded
    prompts: the generate metrics, repeated until ``repeats`` generations and
    ``min_seconds``. Tagged like prefill: ``64``, ``64x8``."""
    _check_generate(rt, prompt_len, new_tokens)
    runs = run_units("generate", rt, prompt_tokens(rt.vocab_size, prompt_len, batch), new_tokens,
                     warmup, repeats, min_seconds)
    return Scenario("generate", _tag(prompt_len, batch),
                    {"prompt_len": prompt_len, "new_tokens": new_tokens, "batch": batch,
                     "repeats": len(runs)},
                    SCENARIOS.get("generate").measurements(runs))


def generate_sweep(rt: CausalLM, prompt_len: int, batches: tuple[int, ...] = (1, 4, 8, 16),
                   new_tokens: int = 32, repeats: int = 5, warmup: int = 1,
                   min_seconds: float = 0.0) -> list[Scenario]:
    """``generate_latency`` at each batch size: how throughput grows with batch while the
    per-step time (TPOT) grows less, as long as a decode step stays bound by streaming the
    weights. Prompts are equal-length (``prompt_tokens``: row 0 of every batch is the batch-1
    prompt), which every runtime batches without an attention mask."""
    return [generate_latency(rt, prompt_len, new_tokens, repeats, warmup, min_seconds, b)
            for b in batches]


def batch_sweep(rt: CausalLM, seq_len: int, batches: tuple[int, ...] = (1, 2, 4, 8),
                min_seconds: float = 1.0) -> list[Scenario]:
    """Prefill latency at each batch size (throughput = batch * seq_len / latency)."""
    out = []
    for b in batches:
        r = prefill_latency(rt, seq_len, batch=b, min_seconds=min_seconds)
        r.derived["tokens_per_s"] = b * seq_len / (r.measurement("prefill_ms").median / 1e3)
        out.append(r)
    return out

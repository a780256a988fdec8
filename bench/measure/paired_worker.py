"""The two sides of a paired comparison: one worker process per model, driven over a pipe.

A worker loads its model once, fixes its threads once, then answers requests one at a time:
``warmup`` (run units until warm, then calibrate how many units make a trial), ``trial``
(run K units, return the mean of each metric) and ``stop``. Between requests it blocks in
``recv``, asleep, so the worker that is being timed has the machine to itself.

CPU workers are forked from the fork server that has imported torch and transformers (as
``run_isolated`` does), so a comparison does not pay 2 x 7 s of imports; CUDA workers are
spawned, since a CUDA context must never be inherited through fork. Every worker holds a
lifeline to the parent and dies with it, however the parent dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time

from slimbench.bench.measure.paired_stats import Calibration, TrialPlan
from slimbench.errors import ModelLoadError, SlimbenchError, UsageError

# what every CPU worker imports anyway: the fork server imports it once
WORKER_PRELOAD = ("torch", "transformers", "onnxruntime", "slimbench.compress.loader",
           "slimbench.bench.runtimes", "slimbench.bench.measure.environment",
           "slimbench.bench.measure.paired_worker")
WARMUP_UNITS = 3  # at least this many untimed units per side ...
WARMUP_SECONDS = 0.5  # ... and at least this long (ORT and the allocators settle in it)
LOAD_TIMEOUT = 900.0  # loading a hub model or building a large random shape on 2 busy cores
_ERRORS = {"UsageError": UsageError, "ModelLoadError": ModelLoadError}


@dataclasses.dataclass(frozen=True)
class WorkerModel:
    """What a worker loaded and how it runs it (``compare --json``'s ``models``).

    Attributes:
        spec: the model spec it loaded.
        backend: torch or onnxruntime.
        device: where it runs.
        threads: its intra-op threads.
        parameters: parameter count.
        dtype: dtype of the weights as loaded.
        kind: reference, local, hub or shape.
        recipe: the steps that made the artifact.
        bytes_on_disk: bytes of the weight files, or None.
        weights_sha256: sha256 of the weight files, or None.
        pid: the worker's process id.
    """

    spec: str
    backend: str
    device: str
    threads: int
    parameters: int
    dtype: str
    kind: str
    recipe: list[str]
    bytes_on_disk: int | None
    weights_sha256: str | None
    pid: int


@dataclasses.dataclass(frozen=True)
class WorkerReady:
    """A worker's first answer, once its model is loaded.

    Attributes:
        model: what it loaded.
        fingerprint: its environment's fingerprint (``slimbench/fingerprint.py``), captured
            after threads were set and the model loaded: what the trials run in.
    """

    model: WorkerModel
    fingerprint: dict | None


def _spin(seconds: float) -> None:
    """Busy-wait: the injected slowdown must cost CPU time like real work, not sleep."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _Bench:
    """The worker's model and the scenario whose units of work it times
    (``scenarios.SCENARIOS``: the very units a cell times, with the same metrics).

    ``slowdown`` (test-only) makes every timed step cost ``1 + slowdown`` times its own
    measured time: the worker's clock (``_timed``) busy-waits ``slowdown`` times each interval
    the scenario's unit measures (each decode step; each prefill forward; in generate, the
    prefill and then the rest of the generation) inside the timed region.
    """

    def __init__(self, spec: str, options: dict, slowdown: float) -> None:
        from slimbench.bench.measure import environment
        from slimbench.bench.measure.cell import check_positions
        from slimbench.bench.measure.scenarios import SCENARIOS, prompt_tokens
        from slimbench.bench.runtimes import make_runtime
        from slimbench.compress.loader import LoadOptions, load_artifact
        from slimbench.fingerprint import fingerprint

        self.scenario = options["scenario"]
        self.defn = SCENARIOS.get(self.scenario)
        self.length, self.new_tokens = options["length"], options["new_tokens"]
        self.slowdown = slowdown
        threads = environment.set_threads(options["threads"])
        loaded = load_artifact(spec, LoadOptions(
            device=options["device"], dtype=options["dtype"],
            allow_pickle=options["allow_pickle"],
            trust_remote_code=options["trust_remote_code"]))
        self.rt = rt = make_runtime(loaded, threads=threads)
        check_positions(spec, rt.max_length, self.scenario, self.length, self.new_tokens)
        self.prompt = prompt_tokens(rt.vocab_size, self.length)  # (1, length): same work always
        info = loaded.info
        self.describe = WorkerReady(WorkerModel(
            spec=spec, backend=rt.backend, device=rt.device, threads=threads,
            parameters=info.parameters, dtype=info.dtype, kind=info.kind,
            recipe=list(info.recipe), bytes_on_disk=info.bytes_on_disk,
            weights_sha256=info.weights_sha256, pid=os.getpid()),
            # captured after threads are set and the model is loaded: what the trials run in
            fingerprint(environment.capture(), rt.backend))
        self._states = {}  # decode in steps: slot -> the DecodeState of a unit under way

    def _timed(self, t0: float) -> float:
        """The scenarios' clock: seconds since ``t0`` after a synchronize, stretched by the
        injected slowdown."""
        self.rt.sync()
        dt = time.perf_counter() - t0
        if self.slowdown:
            _spin(self.slowdown * dt)
            dt = time.perf_counter() - t0
        return dt

    def unit(self) -> dict[str, float]:
        """One unit of the scenario's work: each of its metrics, the mean over the unit."""
        return self.defn.values(self.defn.unit(self.rt, self.prompt, self.new_tokens,
                                               self._timed))

    def decode_steps(self, steps: int, slot: str = "main") -> dict[str, float]:
        """``steps`` timed decode steps (``scenarios.decode_steps``) that continue the unit
        under way in ``slot``; a new unit (with its untimed prefill) once the last one has had
        its ``new_tokens`` steps. (A runtime may only continue the cache of its latest call:
        ORT's raises otherwise; so slots take turns, never interleave.)"""
        from slimbench.bench.measure import scenarios

        state = self._states.get(slot)
        if state is None or state.done >= self.new_tokens:
            state = self._states[slot] = scenarios.decode_start(self.rt, self.prompt)
        steps = min(steps, self.new_tokens - state.done)
        return self.defn.values(scenarios.decode_steps(self.rt, state, steps, self._timed))

    def _filler_steps(self, steps: int) -> dict[str, float]:
        """A filler trial for decode in steps: as many one-token forwards without a cache
        (the same weights streamed, the same thread pool busy), which leave the unit under way
        and its cache alone, so that both sides' units stay in lockstep."""
        token = self.prompt[:, -1:]
        for _ in range(steps):
            self.rt.forward(token, keep_cache=False)
        self.rt.sync()
        return {}

    def warmup(self, _=None) -> Calibration:
        """Untimed units until warm; then what a unit costs: ``unit_ms`` (wall, with
        decode's untimed prefill, which a trial also spends) and, for decode, ``step_ms``
        (one timed step: its primary metric), each the fastest warm-up unit's.

        Why the fastest: trials are sized from these, and two sides whose trials differ in
        length meet a busy host differently (the longer one runs further past its wake-up
        and loses more time to other work). A median taken during a burst of other work sized
        an A/A's baseline trials at 1 unit and its candidate's at 3, and the candidate came
        out 9% "slower". The fastest unit is the least disturbed figure of a model's own cost.
        """
        walls, steps = [], []
        start = time.perf_counter()
        while len(walls) < WARMUP_UNITS or time.perf_counter() - start < WARMUP_SECONDS:
            t0 = time.perf_counter()
            values = self.unit()
            walls.append(time.perf_counter() - t0)
            steps.append(values[self.defn.primary])
        return Calibration(unit_ms=min(walls[1:]) * 1e3,  # the 1st is cold
                           warmup_units=len(walls),
                           step_ms=min(steps[1:]) if self.scenario == "decode" else None)

    def trial(self, plan: TrialPlan) -> dict[str, float]:
        """One trial, by metric name: K ``units``: the mean of each metric (in its unit) over
        K units; c ``steps`` (decode): c steps that continue the current unit; a ``filler``
        trial of steps returns no figures (they are not used)."""
        if plan.steps is not None and plan.filler:
            return self._filler_steps(plan.steps)
        if plan.steps is not None:
            return self.decode_steps(plan.steps)
        k = plan.units
        sums: dict[str, float] = {}
        for _ in range(k):
            for name, value in self.unit().items():
                sums[name] = sums.get(name, 0.0) + value
        return {name: total / k for name, total in sums.items()}


def serve(spec: str, options: dict, slowdown: float, conn, lifeline) -> None:
    """Worker process: load, answer ("ok", description) or the error, then serve requests
    ``(name, argument)`` until "stop" or the parent is gone."""
    from slimbench.bench.measure.isolation import watch_parent
    from slimbench.log import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    watch_parent(lifeline)
    setup_logging(int(os.environ.get("SLIMBENCH_VERBOSITY", "0")))
    bench = None
    with contextlib.suppress(EOFError, OSError):  # the parent is gone: nobody to answer
        try:
            bench = _Bench(spec, options, slowdown)
            conn.send(("ok", bench.describe))
        except BaseException as e:  # noqa: BLE001 - every failure must reach the parent
            conn.send(_error(e))
            return
        while True:
            name, arg = conn.recv()
            if name == "stop":
                return
            try:
                conn.send(("ok", getattr(bench, name)(arg)))
            except BaseException as e:  # noqa: BLE001
                conn.send(_error(e))


def _error(e: BaseException) -> tuple:
    text = str(e).splitlines()[0] if str(e) else ""
    return ("error", type(e).__name__, text, isinstance(e, SlimbenchError))


class Worker:
    """Parent-side handle of one worker process (``role`` is "baseline" or "candidate")."""

    def __init__(self, role: str, spec: str, options: dict, slowdown: float = 0.0) -> None:
        from slimbench.bench.measure.isolation import _context

        self.role, self.spec = role, spec
        ctx = _context(() if options["device"].startswith("cuda") else WORKER_PRELOAD)
        self.conn, child_conn = ctx.Pipe(duplex=True)
        life_r, self._life_w = ctx.Pipe(duplex=False)  # we hold the writer: the lifeline
        self.proc = ctx.Process(target=serve, args=(spec, options, slowdown, child_conn, life_r),
                                daemon=True, name=f"slimbench-{role}")
        self.proc.start()
        child_conn.close()
        life_r.close()

    def ready(self) -> WorkerReady:
        """The worker's description once it has loaded its model (raises its error)."""
        return self._answer(LOAD_TIMEOUT)

    def request(self, name: str, arg, timeout: float):
        self.conn.send((name, arg))
        return self._answer(timeout)

    def _answer(self, timeout: float):
        deadline = time.perf_counter() + timeout
        while not self.conn.poll(0.5):
            if not self.proc.is_alive() and not self.conn.poll(0):
                raise SlimbenchError(f"{self.role} worker ({self.spec}) died: "
                                     f"{_exit_reason(self.proc.exitcode)}")
            if time.perf_counter() > deadline:
                raise SlimbenchError(f"{self.role} worker ({self.spec}) gave no answer in "
                                     f"{timeout:g} s")
        try:
            message = self.conn.recv()
        except EOFError:
            self.proc.join(1)
            raise SlimbenchError(f"{self.role} worker ({self.spec}) died: "
                                 f"{_exit_reason(self.proc.exitcode)}") from None
        if message[0] == "ok":
            return message[1]
        _, kind, text, known = message
        # a user's problem (bad spec, too long a prompt) keeps its class: one line, exit 2
        cls = _ERRORS.get(kind, SlimbenchError) if known else SlimbenchError
        prefix = "" if known and text.startswith(self.spec) else f"{self.spec}: "
        raise cls(f"{self.role} {prefix}{text}" if known else
                  f"{self.role} worker ({self.spec}) failed: {kind}: {text}")

    def close(self) -> None:
        """Stop the worker: politely, then by force; never leaves it running."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop", None))
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()
        self._life_w.close()


def cpu_snapshot(pids: list[int]) -> tuple[int, int, int] | None:
    """(the machine's busy jiffies, its total jiffies, the jiffies ``pids`` used), summed
    over all CPUs, from /proc; None where there is no /proc. Hypervisor steal counts as busy:
    it is CPU some other machine took."""
    from pathlib import Path

    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy = user + nice + system + irq + softirq + steal
        ours = 0
        for pid in pids:
            # after "(comm)": field 3 onwards; utime and stime are fields 14 and 15
            rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ours += int(rest[11]) + int(rest[12])
        return busy, busy + idle + iowait, ours
    except (OSError, ValueError, IndexError):
        return None


def other_cores(before, after) -> float | None:
    """How many cores' worth of CPU other work used between two ``cpu_snapshot``s."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    wall = (after[1] - before[1]) / (os.cpu_count() or 1)  # jiffies of one CPU
    return max(0.0, ((after[0] - before[0]) - (after[2] - before[2])) / wall)


def busy_warning(others: float | None, threads: int, device: str) -> str | None:
    """Other work on the machine (``others`` cores busy on average during the pairs; not the
    load average, which back-to-back comparisons fill with their own work): pairing cancels
    its slow changes, but not its fast ones, which widen the interval; and a
    CPU thread pool as wide as the machine waits at every barrier for whichever thread the
    scheduler took away (on a 2-core host at load 4, the reference's decode step took
    39 ms at 2 threads and 2.7 ms at 1 thread)."""
    cores = os.cpu_count() or 1
    if others is None or not device.startswith("cpu") or others + threads <= cores + 0.25:
        return None
    hint = "; fewer --threads gives steadier figures" if threads >= cores else ""
    return (f"the machine was busy: other work used {others:.1f} of its {cores} cores during "
            f"the comparison, which ran {threads} threads per worker{hint}")


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (the kernel's OOM killer sends SIGKILL)"
                                      if name == "SIGKILL" else "")
    return f"exited with status {code}"

"""ONNX Runtime backend: the ``CausalLM`` protocol over an exported merged KV-cache graph.

Decoding with ORT is slow when every step hands the KV cache back to Python and allocates
it anew. Here the cache lives in two preallocated buffer sets per tensor, bound with IO
binding: a step reads the past from one set and writes its presents into the other (the
graph's Concat cannot work in place), so decoding allocates nothing per token and copies
nothing through numpy but the logits.

Binding 2 x layers x 2 tensors costs ~6 us of Python each (~0.35 ms per gpt2 step, more
with cold caches after a run). Since a decode step's binding depends only on (buffer set,
past length), it is built once and reused: the token goes into a bound ids buffer in place
and the logits come out of a bound host buffer.

The buffers hold ``capacity`` positions, not the model's whole position table: Qwen2's 32k
or Llama 3's 128k positions would take gigabytes per buffer set. A pool starts at
``INITIAL_POSITIONS`` (or twice the prompt, or the table when that is smaller, as for GPT-2's
1024) and doubles when a step needs more, carrying the newest cache over.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from slimbench.bench.runtimes.base import RuntimeBase
from slimbench.compress.arch import head_dim, max_positions, n_kv_heads, n_layers
from slimbench.compress.loader import LoadedModel
from slimbench.compress.onnx_export import io_names

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
INITIAL_POSITIONS = 2048


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@dataclasses.dataclass(frozen=True)
class OrtPast:
    """A KV cache held in the runtime's buffers: which set, how many positions, which step.

    Only the newest cache is valid: the next step overwrites the set the one before used.
    """

    slot: int
    length: int
    batch: int
    step: int


class _KVPool:
    """Two sets of flat device buffers, one per past/present tensor, for ``capacity``
    positions."""

    def __init__(self, batch: int, n_tensors: int, per_position: int, capacity: int,
                 dtype, device: str, device_id: int) -> None:
        import onnxruntime as ort

        self.batch, self.per_position, self.capacity = batch, per_position, capacity
        self.dtype, self.device, self.device_id = dtype, device, device_id
        size = batch * per_position * capacity
        self.sets = [[ort.OrtValue.ortvalue_from_shape_and_type([size], dtype, device, device_id)
                      for _ in range(n_tensors)] for _ in range(2)]
        # single-token decode steps: bound ids buffer, bound host logits, bindings by
        # (set read, past length)
        self.ids = ort.OrtValue.ortvalue_from_shape_and_type([batch, 1], np.int64, device,
                                                             device_id)
        self.logits: np.ndarray | None = None
        self.bindings: dict[tuple[int, int], object] = {}

    def grow(self, capacity: int, slot: int, length: int) -> None:
        """Reallocate both sets for ``capacity`` positions, keeping the first ``length``
        positions of set ``slot`` (the newest cache; a buffer is laid out (batch, heads,
        length, head size), so those are its first elements). Through host memory: growing
        is rare, and OrtValue has no device-to-device copy."""
        import onnxruntime as ort

        size = self.batch * self.per_position * capacity
        kept = self.batch * self.per_position * length
        for i, sets in enumerate(self.sets):
            for j, buf in enumerate(sets):
                new = ort.OrtValue.ortvalue_from_shape_and_type([size], self.dtype, self.device,
                                                                self.device_id)
                if i == slot and kept:
                    host = np.zeros(size, dtype=self.dtype)
                    host[:kept] = buf.numpy()[:kept]
                    new.update_inplace(host)
                sets[j] = new
        self.capacity = capacity
        self.bindings.clear()  # they point into the old buffers


class OrtRuntime(RuntimeBase):
    """Runs an ONNX artifact in an ORT session (one per runtime, threads fixed).

    Args:
        loaded: what ``load_artifact`` returned for an ONNX artifact.
        threads: ORT intra-op threads (None: ORT's default).
    """

    backend = "onnxruntime"
    # the exported graph has no attention-mask input, so prompts of different lengths cannot
    # share a padded batch: greedy_generate_batch falls back to one example at a time
    batched_generation = False

    def __init__(self, loaded: LoadedModel, threads: int | None = None) -> None:
        self.onnx = loaded.model
        self.info = loaded.info
        self.session = self.onnx.session(threads)
        cfg = self.onnx.config
        self.max_length = max_positions(cfg)
        self.vocab_size = int(cfg.vocab_size)
        # the cache holds KV heads: fewer than the query heads under grouped-query attention
        self.kv_heads, self.head_dim = n_kv_heads(cfg), head_dim(cfg)
        self.input_names, self.output_names = io_names(n_layers(cfg))
        types = {i.name: i.type for i in self.session.get_inputs()}
        types |= {o.name: o.type for o in self.session.get_outputs()}
        self.kv_dtype = _NUMPY_TYPES[types[self.input_names[1]]]
        self.logits_dtype = _NUMPY_TYPES[types["logits"]]
        self.fallback_nodes = None  # filled by the harness when it profiles placement
        self._ort_device = "cuda" if self.onnx.device.startswith("cuda") else "cpu"
        self._ort_device_id = int(self.onnx.device.partition(":")[2] or 0)
        # the protocol's form: "cpu" or "cuda:N" (ORT itself takes name and id apart)
        self.device = (f"cuda:{self._ort_device_id}" if self._ort_device == "cuda" else "cpu")
        self._pool: _KVPool | None = None
        self._step = 0

    def sync(self) -> None:
        """Nothing to wait for: ``run_with_iobinding`` returns after the device work is done
        (and the logits are bound to host memory)."""

    def reset_cache(self) -> None:
        """Drop the KV buffers and the decode bindings built on them, so that the next
        generation is cold (it allocates and binds anew): what a benchmark of that cost needs.
        """
        self._pool = None

    def _pool_for(self, batch: int, total: int) -> _KVPool:
        """The pool for a prefill of ``total`` positions (a new one for a new batch size)."""
        if self._pool is None or self._pool.batch != batch or self._pool.capacity < total:
            self._pool = None  # free the old buffers before allocating new ones
            capacity = min(self.max_length, max(INITIAL_POSITIONS, 2 * total))
            self._pool = _KVPool(batch, len(self.input_names) - 1, self.kv_heads * self.head_dim,
                                 capacity, self.kv_dtype, self._ort_device, self._ort_device_id)
        return self._pool

    def bind(self, ids: np.ndarray, past: OrtPast | None, keep_cache: bool = True):
        """An IO binding for one step, the logits array it fills, and the cache it will write
        (None without ``keep_cache``). For a single-token step the logits array is the pool's
        reused buffer: copy it before the next step.

        Public so that a benchmark can time ``session.run_with_iobinding`` alone on the very
        binding the loop uses.
        """
        import onnxruntime as ort

        batch, seq = ids.shape
        past_len = past.length if past is not None else 0
        total = past_len + seq
        if total > self.max_length:
            raise ValueError(f"{total} positions exceed the model's {self.max_length}")
        if past is not None and (past.step != self._step or past.batch != batch):
            raise ValueError("stale or mismatched KV cache: only the cache returned by the "
                             "latest forward call of this runtime can be continued")
        new_past = None
        if keep_cache:
            new_past = OrtPast(0 if past is None else 1 - past.slot, total, batch,
                               self._step + 1)
        if past is not None and keep_cache and total > self._pool.capacity:
            self._pool.grow(min(self.max_length, max(total, 2 * self._pool.capacity)), past.slot,
                            past.length)
        if past is not None and seq == 1 and keep_cache:
            pool = self._pool
            pool.ids.update_inplace(np.ascontiguousarray(ids, dtype=np.int64))
            binding = pool.bindings.get((past.slot, past_len))
            if binding is None:
                if pool.logits is None:
                    pool.logits = np.empty((batch, 1, self.vocab_size), self.logits_dtype)
                binding = self._new_binding(pool.ids, pool.logits, past, new_past)
                pool.bindings[(past.slot, past_len)] = binding
            return binding, pool.logits, new_past
        if new_past is not None and past is None:
            self._pool_for(batch, total)
        ids_value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(ids, dtype=np.int64),
                                                     self._ort_device, self._ort_device_id)
        logits = np.empty((batch, seq, self.vocab_size), dtype=self.logits_dtype)
        return self._new_binding(ids_value, logits, past, new_past), logits, new_past

    def _new_binding(self, ids_value, logits: np.ndarray, past: OrtPast | None,
                     new_past: OrtPast | None):
        import onnxruntime as ort

        dev, dev_id = self._ort_device, self._ort_device_id
        batch = logits.shape[0]
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("input_ids", ids_value)
        shape = [batch, self.kv_heads, past.length if past else 0, self.head_dim]
        if past is None:
            empty = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.kv_dtype), dev, dev_id)
            for name in self.input_names[1:]:
                binding.bind_ortvalue_input(name, empty)
        else:
            for name, buf in zip(self.input_names[1:], self._pool.sets[past.slot], strict=True):
                binding.bind_input(name, dev, dev_id, self.kv_dtype, shape, buf.data_ptr())
        # logits go straight into a host array (ORT copies them off the device in the run)
        binding.bind_output("logits", "cpu", 0, logits.dtype, list(logits.shape),
                            logits.ctypes.data)
        if new_past is None:  # no cache wanted: ORT allocates the presents and drops them
            for name in self.output_names[1:]:
                binding.bind_output(name, dev, dev_id)
            return binding
        out_shape = [batch, self.kv_heads, new_past.length, self.head_dim]
        for name, buf in zip(self.output_names[1:], self._pool.sets[new_past.slot], strict=True):
            binding.bind_output(name, dev, dev_id, self.kv_dtype, out_shape, buf.data_ptr())
        return binding

    def forward(self, input_ids, past: OrtPast | None = None, keep_cache: bool = True):
        """One graph run; returns (logits as a numpy array, the new cache or None).

        Without ``keep_cache`` ORT allocates the presents and drops them: scoring a batch
        leaves the decode buffers alone.
        """
        ids = np.asarray(input_ids, dtype=np.int64)
        binding, logits, new_past = self.bind(ids, past, keep_cache)
        self.session.run_with_iobinding(binding)
        if new_past is not None:
            self._step = new_past.step
        if self._pool is not None and logits is self._pool.logits:
            logits = logits.copy()  # the buffer is overwritten by the next step
        return logits, new_past

    def placement(self) -> dict:
        """Which execution provider ran each graph node, from ORT's profiler on one prefill.

        Nodes that the primary provider (CUDA on a GPU) could not take run on the CPU
        provider, often with copies around them: the harness reports them as fallbacks.
        """
        import collections
        import json
        import tempfile

        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="slimbench-ortprof-") as tmp:
            opts = ort.SessionOptions()
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "profile")
            opts.log_severity_level = 3
            session = ort.InferenceSession(str(self.onnx.path), opts,
                                           providers=self.onnx.providers())
            feeds = {"input_ids": np.zeros((1, 4), dtype=np.int64)}
            feeds |= dict(zip(self.input_names[1:], self.onnx.empty_past(1, self.kv_dtype),
                              strict=True))
            session.run(None, feeds)
            events = json.loads(Path(session.end_profiling()).read_text())
        nodes = {}
        for e in events:  # one "<node>_kernel_time" event per node run
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                nodes[e["name"]] = (e["args"].get("provider"), e["args"].get("op_name"))
        primary = session.get_providers()[0]
        by_provider = collections.Counter(p for p, _ in nodes.values())
        fallback = collections.Counter(op for p, op in nodes.values() if p != primary)
        self.fallback_nodes = sum(fallback.values())
        return {"primary": primary, "nodes_by_provider": dict(by_provider),
                "fallback_nodes": self.fallback_nodes, "fallback_ops": dict(fallback)}

    def token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        ids, lengths = self._padded(batch)
        logits, _ = self.forward(ids, keep_cache=False)
        lp = log_softmax(logits[:, :-1])
        picked = np.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]
        return [picked[i, : n - 1] for i, n in enumerate(lengths)]

    def next_token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        # right padding needs no mask under a causal graph: pads come after each sequence
        ids, lengths = self._padded(batch)
        logits, _ = self.forward(ids, keep_cache=False)
        lp = log_softmax(logits)  # (B, T, V) float64
        return [lp[i, :n] for i, n in enumerate(lengths)]

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

Graphs of export_onnx version 2 take an attention mask and position ids: prompts of
different lengths share a left-padded batch (``batched_generation``), and their decode steps
bind the mask and positions from the pool's buffers too (``ort_kv.py``). Steps whose caller
needs only the next token (``last_only``) bind ``logits_index`` = [-1], so lm_head projects one
position. Older graphs (no mask input) run as before, one prompt at a time: every binding
follows the inputs the graph declares.

Graphs exported with fused attention (``compress/fused_attention.py``) take their past and
present as one buffer: the pool has one set, bound whole as both, and the op writes each
step's positions into it (no per-step copy of the cache, which the Concat of the unfused graph
makes: it grows with batch x context). Their batches are right-padded
(``RuntimeBase.padding_side``).

The buffers hold ``capacity`` positions, not the model's whole position table: Qwen2's 32k
or Llama 3's 128k positions would take gigabytes per buffer set. A pool starts at
``INITIAL_POSITIONS`` (or twice the prompt, or the table when that is smaller, as for GPT-2's
1024) and doubles when a step needs more, carrying the newest cache over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slimbench.bench.runtimes.base import ForwardScoring, RuntimeBase
from slimbench.bench.runtimes.ort_kv import KVPool, OrtPast
from slimbench.compress.arch import head_dim, max_positions, n_kv_heads, n_layers
from slimbench.compress.loader import LoadedModel
from slimbench.compress.onnx_model import LOGITS_INDEX, io_names
from slimbench.schema.measurements import Placement

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
INITIAL_POSITIONS = 2048


class OrtRuntime(ForwardScoring, RuntimeBase):
    """Runs an ONNX artifact in an ORT session (one per runtime, threads fixed).

    Args:
        loaded: what ``load_artifact`` returned for an ONNX artifact.
        threads: ORT intra-op threads (None: ORT's default).

    ``batched_generation`` is set per graph: True where it has an attention-mask input, False
    for artifacts exported before that (prompts of different lengths cannot share a padded
    batch there: ``greedy_generate_batch`` runs them one at a time).
    """

    backend = "onnxruntime"
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
        # ids + KV names (both graph interfaces); the control inputs come from onnx.feeds
        self.input_names, self.output_names = io_names(n_layers(cfg))
        types = {i.name: i.type for i in self.session.get_inputs()}
        types |= {o.name: o.type for o in self.session.get_outputs()}
        self.kv_dtype = _NUMPY_TYPES[types[self.input_names[1]]]
        self.logits_dtype = _NUMPY_TYPES[types["logits"]]
        self.batched_generation = self.onnx.has_mask
        # fused attention: one KV buffer set, read and written in place; right-padded rows
        self.fused = self.onnx.fused_attention
        self.padding_side = "right" if self.fused else "left"
        self.batch_invariant = self.onnx.batch_invariant
        self._last_index = LOGITS_INDEX in types  # logits of chosen positions only
        self.fallback_nodes = None  # filled by the harness when it profiles placement
        self._ort_device = "cuda" if self.onnx.device.startswith("cuda") else "cpu"
        self._ort_device_id = int(self.onnx.device.partition(":")[2] or 0)
        # the protocol's form: "cpu" or "cuda:N" (ORT itself takes name and id apart)
        self.device = (f"cuda:{self._ort_device_id}" if self._ort_device == "cuda" else "cpu")
        self._pool: KVPool | None = None
        self._step = 0

    def sync(self) -> None:
        """Nothing to wait for: ``run_with_iobinding`` returns after the device work is done
        (and the logits are bound to host memory)."""

    def reset_cache(self) -> None:
        """Drop the KV buffers and the decode bindings built on them, so that the next
        generation is cold (it allocates and binds anew): what a benchmark of that cost needs.
        """
        self._pool = None

    def _pool_for(self, batch: int, total: int) -> KVPool:
        """The pool for a prefill of ``total`` positions (a new one for a new batch size)."""
        if self._pool is None or self._pool.batch != batch or self._pool.capacity < total:
            self._pool = None  # free the old buffers before allocating new ones
            capacity = min(self.max_length, max(INITIAL_POSITIONS, 2 * total))
            self._pool = KVPool(batch, len(self.input_names) - 1, self.kv_heads * self.head_dim,
                                capacity, self.kv_dtype, self._ort_device, self._ort_device_id,
                                masked=self.batched_generation, shared=self.fused,
                                heads=self.kv_heads)
        return self._pool

    def bind(self, ids: np.ndarray, past: OrtPast | None, keep_cache: bool = True,
             attention_mask=None, position_ids=None, last_only: bool = False):
        """An IO binding for one step, the logits array it fills, and the cache it will write
        (None without ``keep_cache``). For a single-token step the logits array is the pool's
        reused buffer: copy it before the next step. Mask, positions and ``last_only`` as in
        ``forward``.

        Public so that a benchmark can time ``session.run_with_iobinding`` alone on the very
        binding the loop uses.
        """
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
            return self._decode_binding(ids, past, new_past, attention_mask, position_ids)
        if new_past is not None and past is None:
            self._pool_for(batch, total)
        # every input but the past, as the graph declares them (checked there)
        feeds = self.onnx.control_feeds(ids, past_len, attention_mask, position_ids, last_only)
        keep = 1 if last_only and self._last_index else seq
        logits = np.empty((batch, keep, self.vocab_size), dtype=self.logits_dtype)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, self._ort_value(value))
        self._bind_cache(binding, logits, past, new_past)
        return binding, logits, new_past

    def _decode_binding(self, ids, past: OrtPast, new_past: OrtPast, mask, positions):
        """A single-token step on the reused binding of (buffer set, past length): its
        inputs are written into the pool's bound buffers in place."""
        pool = self._pool
        if not pool.masked and (mask is not None or positions is not None):
            # the old interface: refuses a mask with zeros or positions it cannot take
            self.onnx.control_feeds(ids, past.length, mask, positions)
        pool.write_step(ids, past.length, mask, positions)
        binding = pool.bindings.get((past.slot, past.length))
        if binding is None:
            if pool.logits is None:
                pool.logits = np.empty((pool.batch, 1, self.vocab_size), self.logits_dtype)
            binding = self.session.io_binding()
            pool.bind_step_inputs(binding, new_past.length)
            self._bind_cache(binding, pool.logits, past, new_past)
            pool.bindings[(past.slot, past.length)] = binding
        return binding, pool.logits, new_past

    def _ort_value(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(array, self._ort_device, self._ort_device_id)

    def _bind_cache(self, binding, logits: np.ndarray, past: OrtPast | None,
                    new_past: OrtPast | None) -> None:
        """Bind the past (empty, or a pool set), the logits (host array) and the presents
        (the other pool set, or ORT-allocated and dropped without ``new_past``)."""
        dev, dev_id = self._ort_device, self._ort_device_id
        batch = logits.shape[0]
        # logits go straight into a host array (ORT copies them off the device in the run)
        binding.bind_output("logits", "cpu", 0, logits.dtype, list(logits.shape),
                            logits.ctypes.data)
        if self.fused and new_past is not None:
            # past and present are one buffer, bound whole: the op writes the new positions
            # (each row's own, after its length from the mask) and reads the rest in place
            whole = [batch, self.kv_heads, self._pool.capacity, self.head_dim]
            names = zip(self.input_names[1:], self.output_names[1:], self._pool.sets[0],
                        strict=True)
            for past_name, present_name, buf in names:
                binding.bind_input(past_name, dev, dev_id, self.kv_dtype, whole, buf.data_ptr())
                binding.bind_output(present_name, dev, dev_id, self.kv_dtype, whole,
                                    buf.data_ptr())
            return
        shape = [batch, self.kv_heads, past.length if past else 0, self.head_dim]
        if self.fused and past is not None:  # the whole buffer; the mask gives the lengths
            shape[2] = self._pool.capacity
        if past is None:
            empty = self._ort_value(np.zeros(shape, self.kv_dtype))
            for name in self.input_names[1:]:
                binding.bind_ortvalue_input(name, empty)
        else:
            for name, buf in zip(self.input_names[1:], self._pool.sets[past.slot], strict=True):
                binding.bind_input(name, dev, dev_id, self.kv_dtype, shape, buf.data_ptr())
        if new_past is None:  # no cache wanted: ORT allocates the presents and drops them
            for name in self.output_names[1:]:
                binding.bind_output(name, dev, dev_id)
            return
        out_shape = [batch, self.kv_heads, new_past.length, self.head_dim]
        for name, buf in zip(self.output_names[1:], self._pool.sets[new_past.slot], strict=True):
            binding.bind_output(name, dev, dev_id, self.kv_dtype, out_shape, buf.data_ptr())

    def forward(self, input_ids, past: OrtPast | None = None, keep_cache: bool = True,
                attention_mask=None, position_ids=None, last_only: bool = False):
        """One graph run; returns (logits as a numpy array, the new cache or None). See
        ``CausalLM.forward`` for the mask, positions and ``last_only`` (a graph without a
        ``logits_index`` input computes every position; the last one is returned).

        Without ``keep_cache`` ORT allocates the presents and drops them: scoring a batch
        leaves the decode buffers alone.
        """
        ids = np.asarray(input_ids, dtype=np.int64)
        binding, logits, new_past = self.bind(ids, past, keep_cache, attention_mask,
                                              position_ids, last_only)
        self.session.run_with_iobinding(binding)
        if new_past is not None:
            self._step = new_past.step
        if self._pool is not None and logits is self._pool.logits:
            logits = logits.copy()  # the buffer is overwritten by the next step
        elif last_only and logits.shape[1] > 1:
            logits = logits[:, -1:]
        return logits, new_past

    def placement(self) -> Placement:
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
            session.run(None, self.onnx.feeds(np.zeros((1, 4), dtype=np.int64)))
            events = json.loads(Path(session.end_profiling()).read_text())
        nodes = {}
        for e in events:  # one "<node>_kernel_time" event per node run
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                nodes[e["name"]] = (e["args"].get("provider"), e["args"].get("op_name"))
        primary = session.get_providers()[0]
        by_provider = collections.Counter(p for p, _ in nodes.values())
        fallback = collections.Counter(op for p, op in nodes.values() if p != primary)
        self.fallback_nodes = sum(fallback.values())
        return Placement(primary=primary, nodes_by_provider=dict(by_provider),
                         fallback_nodes=self.fallback_nodes, fallback_ops=dict(fallback))

    def _scored(self, batch: list[list[int]]) -> tuple[np.ndarray, list[int], np.ndarray]:
        """Right-padded ids, lengths and every position's logits. A causal graph needs no mask
        for pads after a sequence; a graph with a mask input gets one all the same, as the
        torch runtime does (and the positions from it)."""
        ids, lengths = self._padded(batch)
        mask = self._right_mask(lengths, ids.shape[1]) if self.batched_generation else None
        logits, _ = self.forward(ids, keep_cache=False, attention_mask=mask)
        return ids, lengths, logits



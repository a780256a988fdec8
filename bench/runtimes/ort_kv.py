"""The ORT runtime's KV cache: two preallocated buffer sets per past/present tensor, and the
reused inputs of single-token decode steps (see ``ort_runtime.py`` for why).

A decode step of a graph with mask and position inputs (export_onnx version 2) also reads:

- the attention mask, (batch, past + 1): a view of one flat buffer of ``batch x capacity``
  positions. A (batch, total) array laid out row by row starts at the buffer's first element
  whatever ``total`` is, so one binding per (slot, past length) stays valid. Without padding
  the buffer is all ones and any prefix of it is the mask: nothing is written per step. A
  left-padded batch writes its mask into the host mirror and copies it over (a few KB).
- the position ids, (batch, 1): ``past length`` per row without padding, else one less than
  each row's count of real tokens; written in place like the token ids.
- ``logits_index`` = [-1], bound once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from slimbench.compress.onnx_model import LAST_ONLY, positions_from_mask


@dataclasses.dataclass(frozen=True)
class OrtPast:
    """A KV cache held in the runtime's buffers: which set, how many positions, which step.

    Only the newest cache is valid: the next step overwrites the set the one before used.
    """

    slot: int
    length: int
    batch: int
    step: int


class KVPool:
    """Two sets of flat device buffers, one per past/present tensor, for ``capacity``
    positions; and the bound inputs of single-token decode steps.

    Args:
        masked: the graph takes attention_mask and position_ids (and logits_index) inputs.
        shared: the graph has fused attention (``compress/fused_attention.py``), which writes
            the new positions into its past buffer: one set, read and written by every step
            (both entries of ``sets`` are that set, so the slot arithmetic stays the same).
            Its buffers are bound whole, (batch, heads, capacity, head size), so a row's
            positions are not a prefix of the flat buffer: ``grow`` copies row by row.
    """

    def __init__(self, batch: int, n_tensors: int, per_position: int, capacity: int,
                 dtype, device: str, device_id: int, masked: bool = False,
                 shared: bool = False, heads: int = 1) -> None:
        self.batch, self.per_position, self.capacity = batch, per_position, capacity
        self.dtype, self.device, self.device_id = dtype, device, device_id
        self.masked, self.shared, self.heads = masked, shared, heads
        self.sets = [[self._new([batch * per_position * capacity], dtype)
                      for _ in range(n_tensors)] for _ in range(1 if shared else 2)]
        if shared:
            self.sets.append(self.sets[0])
        # single-token decode steps: bound ids (and positions, index) buffers, bound host
        # logits, bindings by (set read, past length)
        self.ids = self._new([batch, 1], np.int64)
        self.logits: np.ndarray | None = None
        self.bindings: dict[tuple[int, int], object] = {}
        if masked:
            self.positions = self._new([batch, 1], np.int64)
            self.positions_host = np.zeros((batch, 1), np.int64)
            self.index = self._from_numpy(LAST_ONLY)
            self._new_mask()

    def _new(self, shape: list[int], dtype):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.device,
                                                         self.device_id)

    def _from_numpy(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(array, self.device, self.device_id)

    def _new_mask(self) -> None:
        self.mask_host = np.ones(self.batch * self.capacity, np.int64)
        self.mask = self._from_numpy(self.mask_host.copy())
        self.mask_padded = False  # True while the device mask holds a padded batch's zeros

    def write_step(self, ids: np.ndarray, past_length: int, mask, positions) -> None:
        """Put one decode step's inputs into the bound buffers (in place, no allocation on
        the unpadded path). ``mask`` (batch, past_length + 1) or None (all ones);
        ``positions`` (batch, 1) or None (from the mask)."""
        self.ids.update_inplace(np.ascontiguousarray(ids, dtype=np.int64))
        if not self.masked:
            return
        total = past_length + 1
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (self.batch, total):
                raise ValueError(f"attention_mask must be (batch, past + seq) = "
                                 f"{(self.batch, total)}, got {mask.shape}")
            self.mask_host[: self.batch * total].reshape(self.batch, total)[...] = mask
            self.mask.update_inplace(self.mask_host)
            self.mask_padded = True
            if positions is None:
                positions = positions_from_mask(mask, 1)
        elif self.mask_padded:  # back to an unpadded batch: all ones again
            self.mask_host.fill(1)
            self.mask.update_inplace(self.mask_host)
            self.mask_padded = False
        if positions is None:
            self.positions_host.fill(past_length)
        else:
            if np.shape(positions) != (self.batch, 1):
                raise ValueError(f"position_ids must be (batch, seq) = {(self.batch, 1)}, got "
                                 f"{np.shape(positions)}")
            self.positions_host[...] = positions
        self.positions.update_inplace(self.positions_host)

    def bind_step_inputs(self, binding, total: int) -> None:
        """Bind the ids, mask (its first ``batch x total`` elements), positions and index."""
        binding.bind_ortvalue_input("input_ids", self.ids)
        if self.masked:
            binding.bind_input("attention_mask", self.device, self.device_id, np.int64,
                               [self.batch, total], self.mask.data_ptr())
            binding.bind_ortvalue_input("position_ids", self.positions)
            binding.bind_ortvalue_input("logits_index", self.index)

    def grow(self, capacity: int, slot: int, length: int) -> None:
        """Reallocate both sets for ``capacity`` positions, keeping the first ``length``
        positions of set ``slot`` (the newest cache; a buffer is laid out (batch, heads,
        length, head size), so those are its first elements). Through host memory: growing
        is rare, and OrtValue has no device-to-device copy."""
        size = self.batch * self.per_position * capacity
        if self.shared:  # (batch x heads, capacity, head size): each row keeps its prefix
            rows, dim = self.batch * self.heads, self.per_position // self.heads
            for j, buf in enumerate(self.sets[0]):  # sets[1] is the same list
                host = np.zeros((rows, capacity, dim), dtype=self.dtype)
                host[:, : self.capacity] = buf.numpy().reshape(rows, self.capacity, dim)
                self.sets[0][j] = self._new([size], self.dtype)
                self.sets[0][j].update_inplace(host.reshape(-1))
        else:
            kept = self.batch * self.per_position * length
            for i, sets in enumerate(self.sets):
                for j, buf in enumerate(sets):
                    new = self._new([size], self.dtype)
                    if i == slot and kept:
                        host = np.zeros(size, dtype=self.dtype)
                        host[:kept] = buf.numpy()[:kept]
                        new.update_inplace(host)
                    sets[j] = new
        self.capacity = capacity
        if self.masked:  # all ones again: a padded batch writes its mask every step
            self._new_mask()
        self.bindings.clear()  # they point into the old buffers

"""PyTorch eager runtime: the ``CausalLM`` protocol over a loaded Hugging Face model."""

from __future__ import annotations

import inspect

import numpy as np
import torch

from slimbench.bench.runtimes.base import RuntimeBase
from slimbench.compress.loader import LoadedModel


class TorchRuntime(RuntimeBase):
    """Runs a loaded model in torch eager mode on its device.

    Args:
        loaded: what ``load_artifact`` returned.
        threads: accepted so that every runtime is built alike (``make_runtime``); torch's
            intra-op threads are process-wide and set by ``environment.set_threads`` before
            loading, so a runtime does not change them.
    """

    backend = "torch"
    # left padding, an attention mask and position ids from the mask batch any prompts (the
    # loop is RuntimeBase.greedy_generate_batch)
    batched_generation = True

    def __init__(self, loaded: LoadedModel, threads: int | None = None) -> None:
        self.model = loaded.model
        self.info = loaded.info
        cfg = self.model.config
        self.max_length = int(cfg.max_position_embeddings)  # GPT-2's config maps n_positions
        self.vocab_size = int(cfg.vocab_size)
        self._torch_device = next(self.model.parameters()).device
        self.device = str(self._torch_device)  # "cpu" or "cuda:N", as the protocol says
        # transformers 5.2x renamed `past_key_values` to `cache` (argument and output field)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def sync(self) -> None:
        """Wait for queued CUDA kernels: torch launches them asynchronously."""
        if self._torch_device.type == "cuda":
            torch.cuda.synchronize(self._torch_device)

    def placement(self) -> None:
        """None: eager torch runs every op on ``device``; there is no per-op placement."""
        return None

    @torch.inference_mode()
    def forward(self, input_ids, past=None, keep_cache: bool = True, attention_mask=None,
                position_ids=None, last_only: bool = False):
        """One raw forward pass; returns (logits tensor on the device, the cache or None).
        See ``CausalLM.forward``; ``last_only`` is HF's ``logits_to_keep=1`` (lm_head on the
        last position only)."""
        dev = self._torch_device
        input_ids = torch.as_tensor(input_ids).to(dev)
        kw = {}
        if attention_mask is not None:
            kw["attention_mask"] = torch.as_tensor(attention_mask).to(dev)
            if position_ids is None:  # as ORT does; HF would count from the cache length
                seq = input_ids.shape[1]
                position_ids = (kw["attention_mask"].cumsum(-1) - 1).clamp(min=0)[:, -seq:]
        if position_ids is not None:
            kw["position_ids"] = torch.as_tensor(position_ids).to(dev)
        if last_only:
            kw["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, use_cache=keep_cache, **{self._cache_kw: past},
                         **kw)
        return out.logits, getattr(out, self._cache_kw) if keep_cache else None

    @torch.inference_mode()
    def token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        padded, lengths = self._padded(batch)
        ids = torch.from_numpy(padded).to(self._torch_device)
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
        mask = mask.to(self._torch_device)
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        picked = lp.gather(-1, ids[:, 1:, None]).squeeze(-1).double().cpu().numpy()
        return [picked[i, : n - 1] for i, n in enumerate(lengths)]

    @torch.inference_mode()
    def next_token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        padded, lengths = self._padded(batch)
        ids = torch.from_numpy(padded).to(self._torch_device)
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
        logits = self.model(input_ids=ids, attention_mask=mask.to(self._torch_device),
                            use_cache=False).logits
        lp = torch.log_softmax(logits.double(), dim=-1).cpu().numpy()  # (B, T, V)
        return [lp[i, :n] for i, n in enumerate(lengths)]

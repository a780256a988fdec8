"""PyTorch eager runtime: the ``CausalLM`` protocol over a loaded Hugging Face model."""

from __future__ import annotations

import inspect

import numpy as np
import torch

from slimbench.bench.runtime_base import RuntimeBase
from slimbench.compress.loader import LoadedModel


class TorchRuntime(RuntimeBase):
    """Runs a loaded model in torch eager mode on its device.

    Args:
        loaded: what ``load_artifact`` returned.
    """

    backend = "torch"

    def __init__(self, loaded: LoadedModel) -> None:
        self.model = loaded.model
        self.info = loaded.info
        cfg = self.model.config
        self.max_length = int(getattr(cfg, "n_positions", None) or cfg.max_position_embeddings)
        self.vocab_size = int(cfg.vocab_size)
        self.device = next(self.model.parameters()).device
        # transformers 5.2x renamed `past_key_values` to `cache` (argument and output field)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def forward(self, input_ids, past=None):
        """One raw forward pass; returns (logits, past_key_values)."""
        input_ids = torch.as_tensor(input_ids).to(self.device)
        out = self.model(input_ids=input_ids, use_cache=True,
                         **{self._cache_kw: past})
        return out.logits, getattr(out, self._cache_kw)

    @torch.inference_mode()
    def token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        padded, lengths = self._padded(batch)
        ids = torch.from_numpy(padded).to(self.device)
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
        mask = mask.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        picked = lp.gather(-1, ids[:, 1:, None]).squeeze(-1).double().cpu().numpy()
        return [picked[i, : n - 1] for i, n in enumerate(lengths)]

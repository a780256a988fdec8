"""PyTorch eager runtime: the ``CausalLM`` protocol over a loaded Hugging Face model."""

from __future__ import annotations

import inspect

import numpy as np
import torch

from slimbench.compress.loader import LoadedModel


class TorchRuntime:
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
    def forward(self, input_ids: torch.Tensor, past=None):
        """One raw forward pass; returns (logits, past_key_values)."""
        out = self.model(input_ids=input_ids.to(self.device), use_cache=True,
                         **{self._cache_kw: past})
        return out.logits, getattr(out, self._cache_kw)

    @torch.inference_mode()
    def token_logprobs(self, batch: list[list[int]]) -> list[np.ndarray]:
        lengths = [len(x) for x in batch]
        if min(lengths) < 1 or max(lengths) > self.max_length:
            raise ValueError(f"sequence lengths must be in [1, {self.max_length}]")
        # Right padding: under a causal mask, pads after a sequence cannot change its logits.
        ids = torch.zeros(len(batch), max(lengths), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        picked = lp.gather(-1, ids[:, 1:, None]).squeeze(-1).double().cpu().numpy()
        return [picked[i, : n - 1] for i, n in enumerate(lengths)]

    @torch.inference_mode()
    def greedy_generate(self, prompt: list[int], max_new_tokens: int,
                        stop_ids: frozenset[int] = frozenset()) -> list[int]:
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({len(prompt)}) + {max_new_tokens} new tokens exceeds "
                             f"{self.max_length} positions")
        logits, past = self.forward(torch.tensor([prompt]))
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            new.append(token)
            if token in stop_ids or len(new) == max_new_tokens:
                break
            logits, past = self.forward(torch.tensor([[token]]), past)
        return new

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
    # left padding, an attention mask and position ids from the mask batch any prompts
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
    def forward(self, input_ids, past=None, keep_cache: bool = True):
        """One raw forward pass; returns (logits tensor on the device, the cache or None)."""
        input_ids = torch.as_tensor(input_ids).to(self._torch_device)
        out = self.model(input_ids=input_ids, use_cache=keep_cache,
                         **{self._cache_kw: past})
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

    @torch.inference_mode()
    def greedy_generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                              stop_ids: frozenset[int] = frozenset()) -> list[list[int]]:
        """Greedy continuations of prompts of different lengths in one batch, KV-cached.

        Prompts are LEFT-padded so that every row's next token sits in the last column; the
        attention mask hides the pads and the position ids count real tokens only (GPT-2
        would otherwise give a padded row's first token position ``n_pad``, not 0). A row
        that emitted a stop token keeps being fed (its outputs are dropped) until all stop.
        """
        if len(prompts) == 1:  # no padding needed: the single-sequence loop
            return [self.greedy_generate(prompts[0], max_new_tokens, stop_ids)]
        lengths = [len(p) for p in prompts]
        if min(lengths) < 1:
            raise ValueError("empty prompt")
        if max(lengths) + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({max(lengths)}) + {max_new_tokens} new tokens exceeds "
                             f"{self.max_length} positions")
        width = max(lengths)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self._torch_device), mask.to(self._torch_device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, width): 0 at each first token
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         use_cache=True)
        logits, past = out.logits[:, -1], getattr(out, self._cache_kw)
        new: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        next_pos = positions[:, -1:] + 1  # (B, 1)
        for _ in range(max_new_tokens):
            tokens = logits.argmax(-1)  # (B,)
            for i, t in enumerate(tokens.tolist()):
                if not done[i]:
                    new[i].append(t)
                    done[i] = t in stop_ids or len(new[i]) == max_new_tokens
            if all(done):
                break
            mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
            out = self.model(input_ids=tokens[:, None], attention_mask=mask,
                             position_ids=next_pos, use_cache=True, **{self._cache_kw: past})
            logits, past = out.logits[:, -1], getattr(out, self._cache_kw)
            next_pos = next_pos + 1
        return new

"""Parity of a transformed model against its parent: logits, next-token agreement, greedy tokens.

Works on plain "logits functions" (token ids (B, T) -> logits (B, T, V) as numpy), so the same
check serves torch and ONNX Runtime artifacts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from slimbench.compress.manifest import Parity

LogitsFn = Callable[[np.ndarray], np.ndarray]
FP32_PARITY = 1e-4  # max |Δlogits| a float32 export or graph rewrite may show against its parent


def reference_prompts(tokenizer, vocab_size: int, n: int = 4, length: int = 64) -> np.ndarray:
    """(n, length) token ids: held-out stdlib text when a tokenizer exists, else seeded ids."""
    if tokenizer is not None:
        from slimbench.tasks.evalsets import load_evalset

        rows = []
        for r in load_evalset("lm_stdlib"):
            ids = tokenizer(r["text"])["input_ids"]
            if len(ids) >= length:
                rows.append(ids[:length])
            if len(rows) == n:
                return np.array(rows, dtype=np.int64)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (n, length), generator=g).numpy()


def greedy(logits_fn: LogitsFn, prompt: np.ndarray, new_tokens: int) -> list[int]:
    """Greedy continuation without a cache (short, so recomputation is cheap and obviously
    correct: this is the yardstick the cached loops are held to)."""
    ids = prompt[None, :]
    out = []
    for _ in range(new_tokens):
        token = int(logits_fn(ids)[0, -1].argmax())
        out.append(token)
        ids = np.concatenate([ids, [[token]]], axis=1)
    return out


def parity(parent: LogitsFn, child: LogitsFn, prompts: np.ndarray, new_tokens: int = 16,
           greedy_prompts: int = 2, greedy_prefix: int = 16) -> Parity:
    """Max and mean |Δlogits|, top-1 agreement and greedy-continuation match of child vs parent."""
    a = parent(prompts).astype(np.float64)
    b = child(prompts).astype(np.float64)
    diff = np.abs(a - b)
    agree = float((a.argmax(-1) == b.argmax(-1)).mean())
    matches = []
    for p in prompts[:greedy_prompts, :greedy_prefix]:
        matches.append(greedy(parent, p, new_tokens) == greedy(child, p, new_tokens))
    return Parity(max_abs_logit_diff=float(diff.max()), mean_abs_logit_diff=float(diff.mean()),
                  top1_agreement=agree, greedy_identical=int(sum(matches)),
                  greedy_prompts=len(matches), greedy_new_tokens=new_tokens,
                  prompts=[int(x) for x in prompts.shape])


def torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else "cpu"

    @torch.inference_mode()
    def fn(ids: np.ndarray) -> np.ndarray:
        return model(input_ids=torch.as_tensor(ids, device=device)).logits.float().cpu().numpy()

    return fn

"""Log-likelihood of continuations on a ``CausalLM``: what multiple-choice tasks and the
lm-evaluation-harness bridge score.

The conventions are lm-evaluation-harness's (``TemplateLM._encode_pair`` and the Hugging Face
backend's ``_loglikelihood_tokens``), so that a choice scores the same here, through the bridge
and through lm-eval's own ``hf`` backend. They are written out here because lm-eval is an
optional extra and native tasks must run without it (``tests/test_multiple_choice.py`` holds
``encode_pair`` to lm-eval's own):

- a context's trailing whitespace moves to the continuation; context + continuation is encoded
  as one text and the continuation is what follows the context's own tokens, so BPE merges at
  the seam are those of running text;
- an empty context is the prefix token alone (BOS, else EOS);
- a pair longer than ``max_length + 1`` tokens loses tokens on the left: the model reads
  ``(context + continuation)[-(max_length + 1):-1]`` and the continuation's tokens are scored at
  its last ``len(continuation)`` positions.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from slimbench.errors import UsageError
from slimbench.log import quiet_progress
from slimbench.tasks.protocol import CausalLM


def prefix_token_id(tokenizer) -> int:
    """The token an empty context stands for: BOS, else EOS (as lm-eval's ``hf`` backend)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else \
        tokenizer.eos_token_id
    if token is None:
        raise UsageError("the tokenizer has neither a BOS nor an EOS token, so an empty "
                         "context cannot be scored")
    return int(token)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context ids, continuation ids)`` by lm-eval's convention (module docstring)."""
    if not context:
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        # lm-eval: a continuation that already starts with the prefix token keeps it as context
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def encode(tokenizer, text: str) -> list[int]:
    """``tokenizer.encode`` with its own special tokens, except for a text that already starts
    with the prefix token's text (lm-eval's ``hf`` ``tok_encode``: no second BOS)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else \
        tokenizer.eos_token_id
    prefix = tokenizer.decode([token]) if token is not None else ""
    return tokenizer.encode(text, add_special_tokens=not (prefix and text.startswith(prefix)))


def _host(logits) -> np.ndarray:
    """A backend's logits slice as a float32 numpy array (torch tensors leave the device)."""
    if hasattr(logits, "detach"):
        return logits.detach().float().cpu().numpy()
    return np.asarray(logits, dtype=np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def score_continuations(lm: CausalLM, pairs: list[tuple[list[int], list[int]]],
                        batch_size: int = 8, show_progress: bool = False,
                        desc: str = "loglikelihood") -> list[tuple[float, bool]]:
    """``(sum of log p(continuation | context), whether greedy decoding would produce it)``
    for each ``(context ids, continuation ids)`` pair, in the order given.

    Pairs are batched longest first (a batch pads to its first row) and right-padded; under a
    causal mask pads after a sequence change nothing before them. Log-softmax is taken in
    float64 over the continuation's positions only.

    Raises:
        UsageError: an empty context or continuation, or a continuation longer than the model.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    width = lm.max_length
    inputs = []
    for ctx, cont in pairs:
        if not ctx or not cont:
            raise UsageError("a scored pair needs a non-empty context and continuation (an "
                             "empty context is the prefix token: see encode_pair)")
        if len(cont) > width:
            raise UsageError(f"a continuation of {len(cont)} tokens does not fit the model's "
                             f"{width} positions")
        inputs.append((ctx + cont)[-(width + 1):][:-1])  # the last token is only a target
    order = sorted(range(len(pairs)), key=lambda i: -len(inputs[i]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    bar = tqdm(total=len(pairs), desc=desc, unit="req", disable=quiet_progress(show_progress))
    for k in range(0, len(order), batch_size):
        chunk = order[k: k + batch_size]
        lengths = [len(inputs[i]) for i in chunk]
        ids = np.zeros((len(chunk), max(lengths)), dtype=np.int64)  # (B, T) right-padded
        for row, i in enumerate(chunk):
            ids[row, : lengths[row]] = inputs[i]
        mask = None
        if lm.batched_generation:  # a graph without a mask input takes right pads unmasked
            mask = (np.arange(ids.shape[1])[None, :] < np.array(lengths)[:, None]).astype(
                np.int64)
        logits, _ = lm.forward(ids, keep_cache=False, attention_mask=mask)  # (B, T, V)
        for row, i in enumerate(chunk):
            cont = pairs[i][1]
            n, end = len(cont), lengths[row]
            lp = _log_softmax(_host(logits[row, end - n: end]))  # (n, V): predicts cont
            target = np.asarray(cont)
            picked = lp[np.arange(n), target]
            out[i] = (float(picked.sum()), bool((lp.argmax(-1) == target).all()))
        bar.update(len(chunk))
    bar.close()
    return out

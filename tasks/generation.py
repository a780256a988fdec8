"""Run a task on a ``CausalLM``: prompts in, predictions and scores out."""

from __future__ import annotations

import re
import time

from tqdm import tqdm

from slimbench.errors import UsageError
from slimbench.log import quiet_progress
from slimbench.tasks import metrics
from slimbench.tasks.evalsets import load_evalset
from slimbench.tasks.perplexity import PerplexityConfig, perplexity
from slimbench.tasks.protocol import CausalLM
from slimbench.tasks.specs import TASKS, TaskSpec

_IDENT = re.compile(r"\s*([A-Za-z_]\w*)")


def postprocess(kind: str, text: str, stop: tuple[str, ...]) -> str:
    """Turn a raw continuation into the prediction the metric sees."""
    for s in stop:
        text = text.split(s, 1)[0]
    if kind == "identifier":
        m = _IDENT.match(text)
        return m.group(1) if m else ""
    if kind == "first_line":
        return text.split("\n", 1)[0].strip()
    # paragraph: lines up to the first blank one, whitespace folded
    lines = []
    for line in text.split("\n"):
        if not line.strip():
            if lines:
                break
            continue
        lines.append(line.strip())
    return " ".join(" ".join(lines).split())


def stop_token_ids(tokenizer, stop: tuple[str, ...]) -> frozenset[int]:
    """Token ids whose text contains a whole stop string: generation can end right there."""
    if not stop:
        return frozenset()
    vocab = range(len(tokenizer))
    return frozenset(i for i in vocab if any(s in tokenizer.decode([i]) for s in stop))


def score(spec: TaskSpec, predictions: list[str], references: list[str]) -> dict:
    if spec.metric == "f1":
        return metrics.subtoken_f1(predictions, references)
    if spec.metric == "bleu":
        return metrics.corpus_bleu(predictions, references)
    if spec.metric.startswith("rouge"):
        return metrics.rouge(predictions, references)
    raise UsageError(f"task {spec.name}: no scorer for metric {spec.metric!r}")


def run_task(lm: CausalLM, tokenizer, name: str, limit: int | None = None,
             show_progress: bool = False) -> dict:
    """Evaluate ``lm`` on task ``name``; the result carries scores, protocol and examples."""
    spec = TASKS.get(name)
    if tokenizer is None:
        raise UsageError(f"task {name} needs a tokenizer, and this model has none "
                         "(random-weight shape models have no quality to measure)")
    rows = load_evalset(spec.evalset, limit)
    t0 = time.perf_counter()
    if spec.kind == "perplexity":
        scores = perplexity(lm, tokenizer, [r["text"] for r in rows], PerplexityConfig(),
                            show_progress=show_progress)
        examples = []
    else:
        stop_ids = stop_token_ids(tokenizer, spec.stop)
        budget = lm.max_length - spec.max_new_tokens
        preds = []
        for row in tqdm(rows, desc=name, unit="ex", disable=quiet_progress(show_progress)):
            ids = tokenizer(row["prompt"])["input_ids"][-budget:]  # keep the nearest context
            new = lm.greedy_generate(ids, spec.max_new_tokens, stop_ids)
            preds.append(postprocess(spec.postprocess, tokenizer.decode(new), spec.stop))
        refs = [r["target"] for r in rows]
        scores = score(spec, preds, refs)
        examples = [{"id": r["id"], "prediction": p, "reference": r["target"]}
                    for r, p in zip(rows, preds, strict=True)]
    return {
        "task": name, "metric": spec.metric, "value": scores[spec.metric],
        "higher_is_better": spec.higher_is_better, "scores": scores, "n": len(rows),
        "seconds": time.perf_counter() - t0, "examples": examples,
    }

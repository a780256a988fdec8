"""Run a task on a ``CausalLM``: prompts in, predictions and scores out."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

from tqdm import tqdm

from slimbench.errors import UsageError
from slimbench.log import quiet_progress
from slimbench.schema import Score
from slimbench.tasks.bootstrap import RESAMPLES, SEED, bootstrap_ci
from slimbench.tasks.multiple_choice import run_choices
from slimbench.tasks.perplexity import per_text_nll, perplexity_scores
from slimbench.tasks.protocol import CausalLM
from slimbench.tasks.results import (
    Example,
    GenerationExample,
    PerplexityExample,
    TaskResult,
    quality_score,
)
from slimbench.tasks.scorers import METRICS, PERPLEXITY_METRICS, with_defaults
from slimbench.tasks.sources import load_examples, render
from slimbench.tasks.specs import TaskSpec, resolve_task
from slimbench.tasks.stopping import stop_token_ids

_IDENT = re.compile(r"\s*([A-Za-z_]\w*)")


def postprocess(kind: str, text: str, stop: tuple[str, ...]) -> str:
    """Turn a raw continuation into the prediction the metric sees."""
    for s in stop:
        text = text.split(s, 1)[0]
    if kind == "identifier":
        m = _IDENT.match(text)
        return m.group(1) if m else ""
    if kind == "strip":
        return text.strip()
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


def score(spec: TaskSpec, predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Every metric of ``spec`` on the whole set (no interval), by name, plus each metric's
    info (BLEU signature, ROUGE stemming): ``{"bleu": 0.63, "signature": "nrefs:1|..."}``."""
    out = {}
    for m in spec.metric_list:
        scorer = METRICS[m.metric]
        opts = with_defaults(scorer, dict(m.options))
        out[m.metric] = scorer.aggregate(scorer.stats(predictions, references, **opts), **opts)
        out |= scorer.info(**opts)
    return out


def _score_with_ci(spec: TaskSpec, predictions: list[str], references: list[str],
                   resamples: int, seed: int
                   ) -> tuple[dict[str, Score], list[dict[str, float]]]:
    """Per metric ``{value, ci95, resamples, seed, higher_is_better, ...info}``, and per
    example the metric on that example alone (macro-F1 has no per-example value)."""
    results, per_example = {}, [{} for _ in predictions]
    for m in spec.metric_list:
        scorer = METRICS[m.metric]
        opts = with_defaults(scorer, dict(m.options))
        rows = scorer.stats(predictions, references, **opts)
        results[m.metric] = Score.from_metric(
            bootstrap_ci(rows, lambda r, o=opts, s=scorer: s.aggregate(r, **o), resamples,
                         seed).to_dict()
            | {"higher_is_better": m.higher_is_better} | scorer.info(**opts))
        if scorer.per_example:
            for i, ex in enumerate(per_example):
                ex[m.metric] = scorer.aggregate(rows[i: i + 1], **opts)
    return results, per_example


# how a batched runtime pads prompts of different lengths (RuntimeBase.greedy_generate_batch)
_PADDING = {"left": "left, attention mask, position ids from the mask",
            "right": "right, each row's length from the attention mask (fused attention)"}


def generate_predictions(lm: CausalLM, tokenizer, spec: TaskSpec, rows: list[dict[str, Any]],
                         batch_size: int | None = None,
                         show_progress: bool = False) -> tuple[list[str], dict[str, Any]]:
    """Greedy predictions for ``rows`` in row order, and the generation protocol used (the
    ``GenerationConfig`` with batching, padding and truncation: ``QualityScore.protocol``).

    Prompts are sorted by length so that a batch pads little; with left padding, an attention
    mask and position ids from the mask (or right padding and each row's length, for fused
    attention), a row's continuation does not depend on its batch.
    """
    g = spec.generation
    budget = lm.max_length - g.max_new_tokens
    if budget < 1:
        raise UsageError(f"task {spec.name}: max_new_tokens {g.max_new_tokens} leaves no room "
                         f"for a prompt in {lm.max_length} positions")
    stop_ids = stop_token_ids(tokenizer, g.stop)
    prompts = []
    for row in rows:
        ids = tokenizer(render(spec.prompt, row))["input_ids"][-budget:]  # nearest context
        if not ids:
            raise UsageError(f"task {spec.name}: row {row['id']!r} has an empty prompt")
        prompts.append(ids)
    requested = batch_size or g.batch_size
    batched = lm.batched_generation
    # a runtime that cannot pad a batch gets one prompt a call (the result's protocol says so)
    size = requested if batched else 1
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    new_tokens: list[list[int]] = [[] for _ in prompts]
    bar = tqdm(total=len(rows), desc=spec.name, unit="ex", disable=quiet_progress(show_progress))
    for k in range(0, len(order), size):
        chunk = order[k: k + size]
        outs = lm.greedy_generate_batch([prompts[i] for i in chunk], g.max_new_tokens,
                                        stop_ids)
        for i, new in zip(chunk, outs, strict=True):
            new_tokens[i] = new
        bar.update(len(chunk))
    bar.close()
    preds = [postprocess(g.postprocess, tokenizer.decode(n), g.stop) for n in new_tokens]
    protocol = dataclasses.asdict(g) | {
        "batch_size": size, "batch_size_requested": requested,
        "padding": _PADDING[getattr(lm, "padding_side", "left")] if batched and size > 1
        else "none: one example per call" + ("" if batched else
                                             f" ({type(lm).__name__} has no batched generation)"),
        "batch_invariant": bool(getattr(lm, "batch_invariant", True)) or size == 1,
        "prompt_truncation": f"keep the last {budget} tokens",
    }
    return preds, protocol


def run_task(lm: CausalLM, tokenizer, name: str | TaskSpec, limit: int | None = None,
             show_progress: bool = False, batch_size: int | None = None,
             resamples: int = RESAMPLES, seed: int = SEED, split: str = "all",
             offset: int = 0) -> TaskResult:
    """Evaluate ``lm`` on a task (registered name, task YAML path, or ``TaskSpec``): its
    ``QualityScore`` (every metric with its bootstrap interval) and per-example outputs;
    ``split`` and ``offset`` choose the rows as ``sources.load_examples`` does."""
    spec = resolve_task(name)
    if tokenizer is None:
        raise UsageError(f"task {spec.name} needs a tokenizer, and this model has none "
                         "(a random-weight shape, or a model folder without its tokenizer "
                         "files)")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    rows = load_examples(spec, limit, split, offset)
    t0 = time.perf_counter()
    examples: list[Example]
    if spec.kind == "perplexity":
        cfg = spec.perplexity
        if batch_size:
            cfg = dataclasses.replace(cfg, batch_size=batch_size)
        texts = [render(spec.text, r) for r in rows]
        stats, n_windows = per_text_nll(lm, tokenizer, texts, cfg, show_progress)
        ppl = perplexity_scores(stats, n_windows, cfg)
        scores, protocol = ppl.to_dict(), ppl.protocol
        metrics = {
            m.metric: Score.from_metric(
                bootstrap_ci(stats, PERPLEXITY_METRICS[m.metric].aggregate, resamples,
                             seed).to_dict()
                | {"higher_is_better": m.higher_is_better, "resampled": "texts"})
            for m in spec.metric_list}
        examples = [PerplexityExample(r["id"], float(s[0]), int(s[1]), int(s[2]))
                    for r, s in zip(rows, stats, strict=True)]
    elif spec.kind == "multiple_choice":
        res = run_choices(lm, tokenizer, spec, rows, batch_size, resamples, seed, show_progress)
        metrics, scores, protocol, examples = res.metrics, res.scores, res.protocol, \
            res.examples
    else:
        preds, protocol = generate_predictions(lm, tokenizer, spec, rows, batch_size,
                                               show_progress)
        refs = [render(spec.target, r) for r in rows]
        metrics, per_example = _score_with_ci(spec, preds, refs, resamples, seed)
        scores = {k: v.value for k, v in metrics.items()}
        for v in metrics.values():
            scores |= {k: v.info[k] for k in ("signature", "use_stemmer") if k in v.info}
        examples = [GenerationExample(r["id"], p, ref, e)
                    for r, p, ref, e in zip(rows, preds, refs, per_example, strict=True)]
    quality = quality_score(
        task=spec.name, version=spec.version, dataset=spec.dataset.describe(),
        metric=spec.metric, higher_is_better=spec.higher_is_better, metrics=metrics,
        scores=scores, n=len(rows), seconds=time.perf_counter() - t0, protocol=protocol,
        task_spec=spec.to_dict())
    return TaskResult(quality, examples)


def run_entry(lm: CausalLM, tokenizer, spec, limit: int | None = None,
              **kwargs) -> list[TaskResult]:
    """The results of one task entry: one for a slimbench task (``run_task``), one per
    lm-eval task for an ``LmEvalSpec`` (``lmeval_bridge.run_lmeval``); same keyword arguments
    (``show_progress``, ``batch_size``, ``resamples``, ``seed``)."""
    from slimbench.tasks.lmeval_spec import LmEvalSpec

    spec = resolve_task(spec)
    if not isinstance(spec, LmEvalSpec):
        return [run_task(lm, tokenizer, spec, limit, **kwargs)]
    if tokenizer is None:
        raise UsageError(f"{spec.name} needs a tokenizer, and this model has none "
                         "(a random-weight shape, or a model folder without its tokenizer "
                         "files)")
    try:
        from slimbench.tasks.lmeval_bridge import run_lmeval
    except ImportError as e:
        raise UsageError(f"{spec.name} needs lm-evaluation-harness: pip install "
                         f"'slimbench[lmeval]' ({e})") from None
    return run_lmeval(lm, tokenizer, spec, limit, **kwargs)

"""Multiple-choice tasks (``kind: multiple_choice``): each choice scored by its summed
log-likelihood after the prompt, lm-evaluation-harness's convention.

The prompt is the context and ``target_delimiter + choice`` the continuation of each choice
(``tasks/loglikelihood.py`` tokenizes and scores them as lm-eval does). The prediction is the
choice with the highest summed log-likelihood (``acc``), or the highest per character of the
choice (``acc_norm``); ``macro_f1`` is over choice indices. Every example saves its per-choice
log-likelihoods, so that every metric, its bootstrap interval and the gate's paired tests are
recomputed from the same records (``scorers.CHOICE_METRICS``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from slimbench.errors import UsageError
from slimbench.schema import Score
from slimbench.tasks.bootstrap import bootstrap_ci
from slimbench.tasks.fields import render, template_fields
from slimbench.tasks.loglikelihood import encode_pair, score_continuations
from slimbench.tasks.protocol import CausalLM
from slimbench.tasks.results import ChoiceExample
from slimbench.tasks.scorers import CHOICE_METRICS, chance_accuracy, choice_prediction
from slimbench.tasks.specs import ChoiceConfig, TaskSpec


def _choices(spec: TaskSpec, row: dict[str, Any]) -> list[str]:
    """The row's choices: the list a single-field template names, or one template each."""
    if isinstance(spec.choices, str):
        (field,) = template_fields(spec.choices)  # checked by the spec: exactly one field
        value = row.get(field)
        if not isinstance(value, list) or len(value) < 2 or not all(
                isinstance(c, str) for c in value):
            raise UsageError(f"task {spec.name}: row {row['id']!r} field {field!r} must be a "
                             f"list of at least two texts, got {value!r}")
        choices = list(value)
    else:
        choices = [render(t, row) for t in spec.choices]
    if not all(choices):
        raise UsageError(f"task {spec.name}: row {row['id']!r} has an empty choice")
    return choices


def _gold(spec: TaskSpec, row: dict[str, Any], choices: list[str]) -> int:
    """The correct choice's index. As lm-eval's ``doc_to_target``: a target that is one field
    holding an integer is an index; otherwise the rendered text must be one of the choices."""
    fields = template_fields(spec.target)
    if len(fields) == 1 and spec.target == "{" + fields[0] + "}":
        value = row.get(fields[0])
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(choices):
                raise UsageError(f"task {spec.name}: row {row['id']!r} target index {value} is "
                                 f"not one of its {len(choices)} choices")
            return value
    text = render(spec.target, row)
    if text not in choices:
        raise UsageError(f"task {spec.name}: row {row['id']!r} target {text!r} is neither an "
                         f"index nor one of its choices {choices!r}")
    return choices.index(text)


@dataclasses.dataclass(frozen=True)
class ChoiceResult:
    """A multiple-choice task's outcome.

    Attributes:
        metrics: each metric with its interval and direction; accuracies carry the chance
            level in ``info["chance"]``.
        scores: plain metric values, and ``chance`` (accuracy of a uniform guess, percent).
        protocol: the ``ChoiceConfig`` as run, with batching, scoring and truncation.
        examples: per row: prediction and reference indices, per-choice log-likelihoods and
            lengths, and its accuracies.
    """

    metrics: dict[str, Score]
    scores: dict[str, float]
    protocol: dict[str, Any]
    examples: list[ChoiceExample]


def run_choices(lm: CausalLM, tokenizer, spec: TaskSpec, rows: list[dict[str, Any]],
                batch_size: int | None = None, resamples: int = 1000, seed: int = 0,
                show_progress: bool = False) -> ChoiceResult:
    """Score every choice of every row; the task's metrics with bootstrap intervals."""
    cfg = spec.multiple_choice or ChoiceConfig()
    size = batch_size or cfg.batch_size
    records, pairs = [], []
    for row in rows:
        choices = _choices(spec, row)
        context = render(spec.prompt, row)
        records.append({"id": row["id"], "reference": _gold(spec, row, choices),
                        "choice_chars": [len(c) for c in choices], "n": len(choices)})
        pairs += [encode_pair(tokenizer, context, cfg.target_delimiter + c) for c in choices]
    scored = score_continuations(lm, pairs, size, show_progress, desc=spec.name)
    k = 0
    for r in records:
        lls, greedy = zip(*scored[k: k + r.pop("n")], strict=True)
        k += len(lls)
        r |= {"prediction": choice_prediction({"loglikelihoods": lls}),
              "loglikelihoods": [float(x) for x in lls], "greedy": list(greedy)}
    chance = chance_accuracy(records)
    metrics, per_example = {}, [{} for _ in records]
    for m in spec.metric_list:
        scorer = CHOICE_METRICS[m.metric]
        rows_ = scorer.stats(records)
        metrics[m.metric] = bootstrap_ci(rows_, scorer.aggregate, resamples, seed).to_dict() | {
            "higher_is_better": m.higher_is_better}
        if m.metric in ("acc", "acc_norm"):
            metrics[m.metric]["chance"] = chance
        if scorer.per_example:
            for i, ex in enumerate(per_example):
                ex[m.metric] = scorer.aggregate(rows_[i: i + 1])
    # the scorers read plain records, as the paired tests read them back from an examples file
    examples = [ChoiceExample(**r, scores=e) for r, e in zip(records, per_example, strict=True)]
    protocol = dataclasses.asdict(cfg) | {
        "batch_size": size, "pairs": len(pairs),
        "scoring": "summed log-likelihood of target_delimiter + choice after the prompt "
                   "(lm-eval convention); acc_norm divides by the choice's characters",
        "truncation": f"left, to {lm.max_length} positions (prompt and choice together)",
        # False: a row's scores depend on its batchmates (ORT dynamic int8's per-batch scales)
        "batch_invariant": bool(getattr(lm, "batch_invariant", True)) or size == 1,
        "padding": "right, attention mask" if lm.batched_generation else "right, no mask "
                   "(causal: pads after a sequence change nothing before them)",
    }
    scores = {name: v["value"] for name, v in metrics.items()} | {"chance": chance}
    return ChoiceResult({k: Score.from_metric(v) for k, v in metrics.items()}, scores,
                        protocol, examples)

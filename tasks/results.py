"""What running a task returns: its ``QualityScore`` and one typed record per example.

The per-example records are what an examples file (``*.examples.jsonl``) holds, one JSON line
each with its ``task`` (``TaskResult.records``); the gate's paired tests read them back from
there as plain mappings (``tasks/paired.py``), so ``to_dict`` gives exactly the keys written.
Which record a task has follows its kind: perplexity, generation, multiple choice or lm-eval.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from slimbench.schema import QualityScore, Score

# A row's id is the user's: whatever its dataset's "id" field holds (a string or an integer),
# else the row's position.
RowId = Any


@dataclasses.dataclass(frozen=True)
class _Record:
    def to_dict(self) -> dict[str, Any]:
        """The record as one line of an examples file (without its ``task``)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PerplexityExample(_Record):
    """One text of a perplexity task.

    Attributes:
        id: the row's id.
        nll_nats: summed negative log-likelihood of the text's scored tokens, in nats.
        tokens: tokens scored.
        bytes: the text's length in utf-8 bytes.
    """

    id: RowId
    nll_nats: float
    tokens: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class GenerationExample(_Record):
    """One example of a generation task.

    Attributes:
        id: the row's id.
        prediction: the post-processed greedy continuation the metrics saw.
        reference: the rendered target.
        scores: each metric on this example alone (metrics without one, e.g. macro-F1, absent).
    """

    id: RowId
    prediction: str
    reference: str
    scores: dict[str, float]


@dataclasses.dataclass(frozen=True)
class ChoiceExample(_Record):
    """One example of a multiple-choice task (``scorers.CHOICE_METRICS`` reads these fields).

    Attributes:
        id: the row's id.
        reference: the correct choice's index.
        choice_chars: each choice's length in characters (``acc_norm`` divides by it).
        prediction: the choice of highest summed log-likelihood.
        loglikelihoods: each choice's summed log-likelihood after the prompt.
        greedy: per choice, whether greedy decoding would produce it.
        scores: each per-example metric (acc, acc_norm) on this example alone.
    """

    id: RowId
    reference: int
    choice_chars: list[int]
    prediction: int
    loglikelihoods: list[float]
    greedy: list[bool]
    scores: dict[str, float]


@dataclasses.dataclass(frozen=True)
class LmEvalExample(_Record):
    """One document of an lm-eval task.

    Attributes:
        id: lm-eval's ``doc_id``.
        target: the document's target as lm-eval gives it (JSON values).
        prompt_hash: lm-eval's hash of the prompt, if any.
        values: per result metric, the per-example value lm-eval's aggregation reads (a
            number, or a pair such as (log-likelihood, words)).
        responses: per lm-eval filter, the filtered responses.
        scores: the numeric ``values``: what the paired tests resample.
    """

    id: int
    target: Any
    prompt_hash: str | None
    values: dict[str, Any]
    responses: dict[str, Any]
    scores: dict[str, float]


Example = PerplexityExample | GenerationExample | ChoiceExample | LmEvalExample


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """One task run on one model.

    Attributes:
        score: the task's scores, as a results document records them.
        examples: per example, what the model produced and scored, in dataset order.
    """

    score: QualityScore
    examples: list[Example]

    def records(self) -> list[dict[str, Any]]:
        """The lines of an examples file: each example's fields with its ``task``."""
        return [{"task": self.score.task} | e.to_dict() for e in self.examples]


def quality_score(*, task: str, version: str, dataset: str | None, metric: str,
                  higher_is_better: bool, metrics: dict[str, Score], scores: dict[str, Any],
                  n: int, seconds: float, protocol: dict[str, Any],
                  task_spec: dict[str, Any]) -> QualityScore:
    """A ``QualityScore`` with the headline figures copied from ``metrics[metric]``, checked
    against the schema (a non-finite value fails here, naming its field)."""
    head = metrics[metric]
    return QualityScore.from_dict({
        "task": task, "version": version, "dataset": dataset, "metric": metric,
        "value": head.value, "ci95": head.ci95, "higher_is_better": higher_is_better,
        "metrics": {k: s.to_dict() for k, s in metrics.items()}, "scores": scores, "n": n,
        "seconds": seconds, "protocol": protocol, "task_spec": task_spec,
        "examples_file": None})

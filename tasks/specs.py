"""The built-in tasks over the embedded evaluation sets, registered by name."""

from __future__ import annotations

import dataclasses

from slimbench.errors import UsageError
from slimbench.registry import Registry

KINDS = ("perplexity", "generate")
POSTPROCESS = ("identifier", "first_line", "paragraph")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task: which set, how to prompt/generate, which metric and its direction.

    Args:
        name: registry name.
        evalset: embedded evaluation set it reads.
        kind: ``perplexity`` (score the text) or ``generate`` (greedy continuation of a prompt).
        metric: the headline metric key in the result.
        higher_is_better: the metric's direction, for deltas and the gate.
        max_new_tokens: generation budget (``generate`` only).
        stop: strings that end a generation; the prediction is cut before the first one.
        postprocess: how a raw continuation becomes a prediction.
    """

    name: str
    evalset: str
    kind: str
    metric: str
    higher_is_better: bool
    description: str
    max_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    postprocess: str = "first_line"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"task {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "generate" and self.max_new_tokens <= 0:
            raise UsageError(f"task {self.name}: max_new_tokens must be positive")
        if self.postprocess not in POSTPROCESS:
            raise UsageError(f"task {self.name}: postprocess must be one of {POSTPROCESS}")


TASKS: Registry[TaskSpec] = Registry("task")
for _spec in (
    TaskSpec("perplexity", "lm_stdlib", "perplexity", "perplexity", False,
             "token perplexity + bits/byte on held-out stdlib source (window 256, stride 128)"),
    TaskSpec("method_name", "method_name", "generate", "f1", True,
             "predict a function's name from the source before it; subtoken F1 (code2seq)",
             max_new_tokens=12, stop=("(",), postprocess="identifier"),
    TaskSpec("docstring_summary", "docstring_summary", "generate", "bleu", True,
             "write a function's docstring summary line from its signature; corpus BLEU",
             max_new_tokens=32, stop=("\n", '"""'), postprocess="first_line"),
    TaskSpec("docstring_body", "docstring_body", "generate", "rougeL", True,
             "write a docstring's first paragraph from signature + summary; ROUGE-1/2/L",
             max_new_tokens=64, stop=('"""',), postprocess="paragraph"),
):
    TASKS.add(_spec.name, _spec, _spec.description)

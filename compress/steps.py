"""Recipe steps: running one step, and checking a chain of steps before any work.

The registry itself (``Step``, ``STEPS``, ``@register_step``, ``make_config``) lives in
``step_registry.py``, below the loader, and is re-exported here: step modules and callers
import it from this module. See there for how a step is written and found.

A step whose artifact is not a Hugging Face folder records a ``load_transform`` (its name)
and loads it itself (``Step.load``: torch dynamic int8 stores its int8 weights in a form of its
own, ``torch_int8_store.py``); a step that stores its parent's weights plus a recipe re-applies
and re-audits it at load (``Step.transform``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from slimbench.compress.artifact import MANIFEST, finish_manifest, sha256_file, staging_dir
from slimbench.compress.kinds import KINDS, spec_kind
from slimbench.compress.loader import LoadedModel, load_artifact
from slimbench.compress.manifest import Manifest, ParentRef, StepReport
from slimbench.compress.step_registry import STEPS, Step, make_config, register_step
from slimbench.errors import UsageError

__all__ = ["STEPS", "Manifest", "Step", "StepReport", "check_chain", "make_config",
           "parent_recipe", "register_step", "run_step"]


def check_chain(spec: str, steps: list[str]) -> str:
    """Refuse a chain in which a step gets a kind of model it cannot take.

    Returns:
        The kind of the chain's last artifact.

    Raises:
        UsageError: naming the step, what it accepts and what it would get.
    """
    kind, source = spec_kind(spec), repr(spec)
    for i, name in enumerate(steps, 1):
        step = STEPS.get(name)
        if kind not in step.accepts:
            needs = " or ".join(KINDS[k] for k in step.accepts)
            raise UsageError(f"step {name} needs {needs}; {source} is {KINDS[kind]}")
        kind, source = step.produces or kind, f"the output of step {i} ({name})"
    return kind


def run_step(name: str, params: dict, parent_spec: str, out: Path,
             parent_label: str | None = None) -> Manifest:
    """Load ``parent_spec``, apply step ``name`` and write the artifact to ``out``.

    Args:
        parent_label: the parent's name in the manifest when ``parent_spec`` is a staging
            path that will move (a recipe's earlier step).

    Returns:
        The artifact's manifest, as written.

    Raises:
        TypeError: the step returned neither a ``StepReport`` nor a mapping.
    """
    step = STEPS.get(name)
    config = make_config(step, params)  # validated before any model is loaded
    check_chain(parent_spec, [name])  # an incompatible input is refused before it loads
    parent = load_artifact(parent_spec)
    with staging_dir(out) as tmp:
        fields = _report_fields(name, step.apply(parent, config, tmp))
        ref = ParentRef(spec=parent_label or parent_spec,
                        weights_sha256=parent.info.weights_sha256,
                        manifest_sha256=(_manifest_sha256(parent_spec) if parent.manifest
                                         else None),
                        parameters=parent.info.parameters)
        manifest = finish_manifest(tmp, {
            "step": name, "config": dataclasses.asdict(config),
            "recipe": [*parent_recipe(parent), name], "parent": ref.to_dict(),
            "random_weights": parent.info.random_weights, **fields})
    return manifest


def _report_fields(name: str, report: StepReport | dict[str, Any]) -> dict[str, Any]:
    """The manifest fields of a step's report: a built-in step's ``StepReport``, or the plain
    mapping a plugin step may return instead."""
    if isinstance(report, StepReport):
        return report.to_dict()
    if isinstance(report, dict):
        return dict(report)
    raise TypeError(f"step {name} returned {type(report).__name__}; a step returns a "
                    "StepReport (or a mapping of manifest fields)")


def _manifest_sha256(spec: str) -> str | None:
    """The parent artifact's manifest hash: links a chain of artifacts to each other."""
    path = Path(spec) / MANIFEST
    return sha256_file(path) if path.is_file() else None


def parent_recipe(parent: LoadedModel) -> list[str]:
    """The steps that made ``parent`` (empty for a plain checkpoint)."""
    return list(getattr(parent.info, "recipe", None) or [])

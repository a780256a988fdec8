"""Recipes: a YAML list of steps applied in order, each step's artifact kept.

    model: reference            # optional; the command line's model wins
    steps:
      - prune_structured: {ratio: 0.3}
      - distill: {steps: 300}
      - torch_dynamic_int8      # a bare name: default parameters

Every step name and parameter is checked before any model is loaded, so a typo in step 4
never costs the time of steps 1-3. Artifacts go to ``OUT/01-<step>``, ``OUT/02-<step>``, ...;
each manifest names its parent's weights and manifest hashes, which links the chain.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from slimbench import atomic
from slimbench.compress.manifest import Manifest
from slimbench.errors import SlimbenchError, UsageError


@dataclasses.dataclass(frozen=True)
class Recipe:
    steps: list[tuple[str, dict]]
    model: str | None = None


def parse_recipe(data, source: str = "recipe") -> Recipe:
    """A ``Recipe`` from parsed YAML, with one clear message for a malformed one."""
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise UsageError(f"{source}: expected a mapping with a 'steps' list")
    unknown = sorted(set(data) - {"model", "steps"})
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)} (known: model, steps)")
    if not data["steps"]:
        raise UsageError(f"{source}: 'steps' is empty")
    steps = []
    for i, item in enumerate(data["steps"], 1):
        if isinstance(item, str):
            steps.append((item, {}))
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise UsageError(f"{source}: step {i} ({name}): parameters must be a mapping")
            steps.append((str(name), dict(params)))
        else:
            raise UsageError(f"{source}: step {i} must be a step name or "
                             "{name: {param: value}}")
    model = data.get("model")
    return Recipe(steps, str(model) if model is not None else None)


def load_recipe(path: Path) -> Recipe:
    from slimbench.files import read_yaml

    return parse_recipe(read_yaml(path, "recipe file"), str(path))


def resolve(recipe: Recipe, model: str) -> list[tuple[str, dict]]:
    """Validate every step (name and parameters) and fill in recipe-level defaults.

    A ``distill`` step without a teacher distills from the recipe's input model, unless it
    builds a shallower student from its parent (then the parent teaches).
    """
    from slimbench.compress.steps import STEPS, check_chain, make_config

    out = []
    for i, (name, params) in enumerate(recipe.steps, 1):
        try:
            step = STEPS.get(name)
            if name == "distill" and "teacher" not in params and "student_layers" not in params:
                params = {**params, "teacher": model}
            make_config(step, params)
        except SlimbenchError as e:
            # the message names the step already ("step distill: ...", "unknown recipe step")
            raise UsageError(f"recipe step {i}: {e}") from None
        out.append((name, params))
    check_chain(model, [n for n, _ in out])
    return out


def run_recipe(recipe: Recipe, model: str, out: Path, say=print) -> list[Manifest]:
    """Apply the steps in order; returns their manifests.

    All or nothing: the steps write into a staging directory that becomes ``out`` only when
    every step has succeeded, so a failure at step 2 leaves no ``out`` to clean up and the
    rerun is not refused. ``out`` must not exist.
    """
    from slimbench.compress.artifact import staging_dir
    from slimbench.compress.steps import run_step

    steps = resolve(recipe, model)
    out = Path(out)
    manifests, parent = [], model
    with staging_dir(out) as tmp:
        final = {}  # staging path -> where that artifact lives once `out` is in place
        for i, (name, params) in enumerate(steps, 1):
            target = tmp / f"{i:02d}-{name}"
            say(f"[{i}/{len(steps)}] {name} {params or ''} <- {final.get(parent, parent)}")
            manifests.append(run_step(name, params, parent, target,
                                      parent_label=final.get(parent)))
            final[str(target)] = str(out / target.name)
            parent = str(target)
        atomic.write_json(tmp / "recipe.json", {
            "model": model, "steps": [{"name": n, "params": p} for n, p in steps],
            "artifacts": [f"{i:02d}-{n}" for i, (n, _) in enumerate(steps, 1)]})
    return manifests

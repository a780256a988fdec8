"""A step is registered where it is defined: through ``register_step``, with no list to edit.

The toy step below is registered only through the public decorator, in this file; nothing in
the package names it, yet recipes, ``slimbench compress --step`` and the manifest know it.
"""

import dataclasses
import json
import subprocess
import sys

import pytest

from slimbench.bench.cli import main
from slimbench.compress.artifact import MANIFEST
from slimbench.compress.loader import LoadedModel, count_parameters, load_artifact
from slimbench.compress.recipe import Recipe, run_recipe
from slimbench.compress.step_io import save_model
from slimbench.compress.steps import STEPS, register_step
from slimbench.errors import UsageError

BUILTIN_STEPS = {"awq", "distill", "export_ctranslate2", "export_genai", "export_onnx",
                 "export_openvino", "ort_dynamic_int8", "ort_fp16", "ort_optimize",
                 "ort_static_int8", "ort_weight_int4", "prune_structured", "prune_unstructured",
                 "smoothquant", "torch_cast", "torch_dynamic_int8"}


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Args:
        note: recorded in the manifest, to show the config travels.
    """

    note: str = "toy"

    def __post_init__(self) -> None:
        if not self.note:
            raise UsageError("note must not be empty")


@register_step("toy_copy", ToyConfig, version=3)
def _apply_toy_copy(parent: LoadedModel, config: ToyConfig, out) -> dict:
    """test: copy the parent unchanged."""
    save_model(parent.model, parent.tokenizer, out)
    params, nonzero = count_parameters(parent.model)
    return {"format": "hf", "parameters": params, "nonzero_parameters": nonzero,
            "toy_note": config.note}


def test_toy_step_is_listed_with_its_metadata():
    assert "toy_copy" in STEPS.names()
    assert STEPS.describe("toy_copy") == "test: copy the parent unchanged."
    step = STEPS.get("toy_copy")
    assert (step.config_cls, step.apply, step.accepts, step.produces, step.version) == (
        ToyConfig, _apply_toy_copy, ("torch",), None, 3)


def test_toy_step_runs_inside_a_recipe(tiny_dir, tmp_path):
    out = tmp_path / "out"
    recipe = Recipe([("toy_copy", {"note": "first"}), ("prune_unstructured", {"sparsity": 0.5})])
    manifests = run_recipe(recipe, str(tiny_dir), out, say=lambda _: None)
    toy, pruned = manifests
    assert toy.step == "toy_copy" and toy.config == {"note": "first"}
    # a plugin step's own mapping of fields is kept as it returned it
    assert toy.recipe == ["toy_copy"] and toy.report["toy_note"] == "first"
    assert pruned.recipe == ["toy_copy", "prune_unstructured"]
    # the chain is linked: the pruned artifact names the toy artifact as its parent
    assert pruned.parent.spec == str(out / "01-toy_copy")
    on_disk = json.loads((out / "01-toy_copy" / MANIFEST).read_text())
    assert on_disk["step"] == "toy_copy" and on_disk["toy_note"] == "first"
    assert toy.to_dict() == on_disk
    assert load_artifact(str(out / "01-toy_copy")).info.recipe == ["toy_copy"]
    assert pruned.report["sparsity"]["realized"] == pytest.approx(0.5, abs=1e-3)


def test_toy_step_runs_from_the_command_line(tiny_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    main(["compress", str(tiny_dir), "--step", "toy_copy", "--set", "note=cli", "--out",
          str(out)])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["step"] == "toy_copy" and manifest["config"] == {"note": "cli"}
    assert manifest["toy_note"] == "cli" and manifest["recipe"] == ["toy_copy"]
    assert f"wrote artifact {out}" in capsys.readouterr().out


def test_toy_step_parameters_are_validated(tiny_dir, tmp_path):
    with pytest.raises(UsageError, match="step toy_copy: unknown parameter"):
        run_recipe(Recipe([("toy_copy", {"nope": 1})]), str(tiny_dir), tmp_path / "x")
    with pytest.raises(UsageError, match="step toy_copy: note must not be empty"):
        run_recipe(Recipe([("toy_copy", {"note": ""})]), str(tiny_dir), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_every_builtin_step_is_registered_in_its_own_module():
    builtin = {n for n in STEPS.names()
               if STEPS.get(n).apply.__module__.startswith("slimbench.compress.")}
    assert builtin == BUILTIN_STEPS
    for name in BUILTIN_STEPS:
        step = STEPS.get(name)
        # registered where it is defined: the config and the apply function share a module
        assert step.apply.__module__ == step.config_cls.__module__, name
        assert STEPS.describe(name), name


def test_builtin_steps_load_on_first_lookup_in_a_fresh_process():
    # nothing but the registry is imported: the step modules must be found, not listed
    code = ("import json, sys; from slimbench.compress.steps import STEPS; "
            "before = [m for m in sys.modules if m.startswith('slimbench.compress.')]; "
            "print(json.dumps({'before': before, 'names': STEPS.names(), "
            "'modules': sorted({STEPS.get(n).apply.__module__ for n in STEPS.names()})}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                    text=True, check=True).stdout)
    assert set(out["names"]) == BUILTIN_STEPS
    # importing steps.py alone imported none of the modules that define steps
    assert not set(out["before"]) & set(out["modules"])
    assert len(out["modules"]) >= 7  # the steps really live in their own modules


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "toy_copy", "config_cls": ToyConfig}, "registered twice"),
    ({"name": "../evil", "config_cls": ToyConfig}, "name '../evil' is not allowed"),
    ({"name": "toy_bad", "config_cls": dict}, "config_cls must be a dataclass"),
    ({"name": "toy_bad", "config_cls": ToyConfig, "accepts": ("tensorflow",)},
     "unknown model kind"),
])
def test_register_step_refuses_bad_registrations(kwargs, message):
    with pytest.raises((UsageError, ValueError), match=message):
        register_step(**kwargs)(_apply_toy_copy)
    assert "toy_bad" not in STEPS

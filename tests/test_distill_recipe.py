"""Distillation (loss, NaN stop, resume, shallow students) and YAML recipes."""

import copy
import hashlib
import json

import pytest
import torch

from slimbench.bench.cli import main
from slimbench.compress.distill import DistillConfig, distill, distill_loss, shallow_student
from slimbench.compress.loader import load_artifact
from slimbench.compress.recipe import load_recipe, parse_recipe, resolve, run_recipe
from slimbench.errors import CompressionError, UsageError

FAST = {"steps": 4, "batch_size": 2, "seq_len": 16, "warmup": 1, "eval_every": 0,
        "eval_batches": 2}


class _Out:
    def __init__(self, logits):
        self.logits = logits


def test_distill_loss_matches_its_formula():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    cfg = DistillConfig(alpha=0.25, temperature=2.0)
    terms = distill_loss(_Out(s), _Out(t), ids, cfg)
    ps = torch.log_softmax(s[:, :-1] / 2, -1)
    pt = torch.softmax(t[:, :-1] / 2, -1)
    kl = (pt * (pt.log() - ps)).sum(-1).mean()  # KL(teacher || student) per token
    ce = torch.nn.functional.cross_entropy(s[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.loss, 0.25 * 4 * kl + 0.75 * ce)


def test_student_equal_to_teacher_has_zero_kl(tiny_model):
    ids = torch.randint(0, 4096, (2, 9))
    out = tiny_model(input_ids=ids)
    terms = distill_loss(out, out, ids, DistillConfig(alpha=1.0))
    assert terms.kl.item() == pytest.approx(0.0, abs=1e-6)


def test_shallow_student_keeps_first_and_last_layers(tiny_model):
    deep = copy.deepcopy(tiny_model)
    deep.config.n_layer = 2
    student = shallow_student(deep, 1)
    assert student.config.n_layer == 1 and len(student.transformer.h) == 1
    torch.testing.assert_close(student.transformer.h[0].mlp.c_fc.weight,
                               deep.transformer.h[0].mlp.c_fc.weight)
    with pytest.raises(UsageError, match="must be fewer"):
        shallow_student(deep, 2)


def test_nan_stops_with_a_clear_error(tiny_model, ref_tokenizer):
    student = copy.deepcopy(tiny_model)
    with torch.no_grad():
        student.transformer.ln_f.weight[0] = float("nan")
    with pytest.raises(CompressionError, match="diverged at step 1"):
        distill(student, tiny_model, ref_tokenizer, DistillConfig(**FAST))


@pytest.mark.slow
def test_resume_continues_exactly_where_it_stopped(tiny_model, ref_tokenizer, tmp_path):
    cfg = DistillConfig(**FAST | {"steps": 6, "checkpoint_every": 3,
                                  "checkpoint_dir": str(tmp_path / "ckpt")})
    straight = copy.deepcopy(tiny_model).train()
    distill(straight, tiny_model, ref_tokenizer,
            DistillConfig(**FAST | {"steps": 6}))

    interrupted = copy.deepcopy(tiny_model)
    calls = {"n": 0}

    def stop_at_step_4(*_):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    hook = interrupted.register_forward_pre_hook(stop_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        distill(interrupted, tiny_model, ref_tokenizer, cfg)
    hook.remove()
    assert json.loads((tmp_path / "ckpt" / "trainer.json").read_text())["step"] == 3
    resumed = copy.deepcopy(tiny_model)
    record = distill(resumed, tiny_model, ref_tokenizer, cfg)
    assert record.resumed_from == 3
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(UsageError, match="different distillation config"):
        distill(copy.deepcopy(tiny_model), tiny_model, ref_tokenizer,
                DistillConfig(**FAST | {"steps": 6, "lr": 0.5, "checkpoint_dir":
                                        str(tmp_path / "ckpt")}))


@pytest.mark.slow
def test_teacher_changes_the_result(tiny_model, ref_tokenizer):
    with_teacher, alone = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    a = distill(with_teacher, tiny_model, ref_tokenizer, DistillConfig(**FAST | {"alpha": 0.9}))
    b = distill(alone, None, ref_tokenizer, DistillConfig(**FAST | {"alpha": 0.0}))
    assert "kl" in a.history[-1] and "kl" not in b.history[-1]
    assert not torch.equal(with_teacher.transformer.wte.weight, alone.transformer.wte.weight)
    assert b.final_val_perplexity > 0


RECIPE = """
model: MODEL
steps:
  - prune_structured: {ratio: 0.5}
  - distill: {steps: 3, batch_size: 2, seq_len: 16, warmup: 1, eval_every: 0, eval_batches: 2}
  - torch_dynamic_int8
"""


@pytest.mark.slow
def test_recipe_chain_links_manifests(tiny_dir, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("MODEL", str(tiny_dir)))
    recipe = load_recipe(path)
    manifests = run_recipe(recipe, recipe.model, tmp_path / "out", say=lambda _: None)
    assert [m.step for m in manifests] == ["prune_structured", "distill",
                                              "torch_dynamic_int8"]
    assert manifests[-1].recipe == ["prune_structured", "distill", "torch_dynamic_int8"]
    dirs = ["01-prune_structured", "02-distill", "03-torch_dynamic_int8"]
    for prev, m in zip(dirs, manifests[1:], strict=False):
        digest = hashlib.sha256((tmp_path / "out" / prev / "manifest.json").read_bytes())
        assert m.parent.manifest_sha256 == digest.hexdigest()
    assert manifests[1].report["teacher"]["spec"] == str(tiny_dir)  # the recipe's input teaches
    assert manifests[0].parameters < manifests[0].parent.parameters
    final = load_artifact(str(tmp_path / "out" / dirs[-1]))
    assert final.model.config.n_head == 2


@pytest.mark.parametrize("steps, message", [
    ("[prune_structurd]",
     r"recipe step 1: unknown recipe step 'prune_structurd'; did you mean 'prune_structured"),
    ("[{prune_structured: {ratio: 1.5}}]",
     r"recipe step 1: step prune_structured: ratio must be in"),
    ("[export_onnx, {distill: {steps: -3}}]", r"recipe step 2: step distill: steps must be >= 1"),
    ("[{prune_unstructured: {n_m: '4:2'}}]", r"need 0 < N < M"),
    ("[{distill: {stepz: 3}}]", r"unknown parameter\(s\) stepz"),
    ("[]", r"'steps' is empty"),
])
def test_bad_recipes_fail_before_any_work(tmp_path, steps, message, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: reference\nsteps: {steps}\n")
    assert main(["compress", "--recipe", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err


def test_recipe_shape_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown key"):
        parse_recipe({"steps": ["distill"], "modle": "x"})
    with pytest.raises(UsageError, match="expected a mapping"):
        parse_recipe(["distill"])
    with pytest.raises(UsageError, match="distill.*set teacher"):
        # standalone distill of the parent needs a teacher; a recipe supplies its model
        from slimbench.compress.steps import run_step

        run_step("distill", FAST, "reference", tmp_path / "never-written")
    assert not (tmp_path / "never-written").exists()
    assert resolve(parse_recipe({"steps": ["distill"]}), "m")[0][1]["teacher"] == "m"


def test_committed_recipes_are_valid():
    from pathlib import Path

    folder = Path(__file__).parent.parent / "compress" / "recipes"
    files = sorted(folder.glob("*.yaml"))
    assert len(files) >= 2
    for f in files:
        recipe = load_recipe(f)
        assert resolve(recipe, recipe.model)


def test_recipe_and_policy_files_fail_clearly(tmp_path):
    from slimbench.reports.gate import load_policy

    bad = tmp_path / "r.yaml"
    bad.write_text("steps: [distill\nmodel: x\n")
    with pytest.raises(UsageError, match=r"recipe file .*r.yaml: not valid YAML at line \d"):
        load_recipe(bad)
    with pytest.raises(UsageError, match=r"policy file .*nope.yaml does not exist"):
        load_policy(tmp_path / "nope.yaml")

"""Torch-side steps on every architecture family (arch.py): int8 coverage, unstructured
sparsity, shallow students, batched generation; tiny seeded random checkpoints."""

import copy

import pytest
import torch

from slimbench.bench.cli import main
from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.arch import ARCHS, arch_of, n_layers
from slimbench.compress.artifact import Manifest, read_manifest
from slimbench.compress.distill import shallow_student
from slimbench.compress.loader import load_artifact
from slimbench.errors import UsageError

# linear layers per block: gpt2 c_attn, c_proj, c_fc, mlp.c_proj; llama q k v o gate up down;
# gpt_neox query_key_value, dense, h_to_4h, 4h_to_h; opt q k v out fc1 fc2
LINEARS_PER_BLOCK = {"gpt2": 4, "llama": 7, "qwen2": 7, "gpt_neox": 4, "opt": 6}


def _manifest(out) -> Manifest:
    return read_manifest(out)


def _compress(src, out, step, *sets) -> int:
    args = ["compress", str(src), "--step", step, "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return main(args)


def test_every_family_has_a_description_and_unknown_ones_are_named(make_family_model):
    families = ("gpt2", "llama", "qwen2", "gpt_neox", "opt")
    assert {arch_of(make_family_model(f)).family for f in families} == set(ARCHS)
    from transformers import AutoConfig

    with pytest.raises(UsageError, match=r"model type 'bloom' is not an architecture slimbench "
                                         r"knows; known families .*llama \(llama, mistral, "
                                         r"qwen2\)"):
        arch_of(AutoConfig.for_model("bloom"), "export_onnx")


def test_torch_int8_quantizes_every_block_linear(family, family_dirs, tmp_path):
    out = tmp_path / "int8"
    assert _compress(family_dirs[family], out, "torch_dynamic_int8") == 0
    m = _manifest(out)
    audit, expected = m.report["quantization"], 2 * LINEARS_PER_BLOCK[family]
    assert audit["blocks"] == 2 and audit["expected_block_linears"] == expected
    assert audit["block_linears_int8"] == audit["block_linears"] == expected
    assert audit["lm_head"] == "float"
    # int8 of a random tiny model: small logit error, same top-1 on nearly every position
    assert m.report["parity"]["max_abs_logit_diff"] < 0.05
    assert m.report["parity"]["top1_agreement"] >= 0.9
    loaded = load_artifact(str(out))  # quantized again on load: the same coverage
    from torch.ao.nn.quantized import dynamic as nnqd

    assert sum(isinstance(x, nnqd.Linear) for x in loaded.model.modules()) == expected


@pytest.fixture
def bloom_dir(tmp_path, ref_tokenizer):
    """A tiny model of a family slimbench has no description for."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("bloom", vocab_size=4096, hidden_size=32, n_layer=1, n_head=2)
    src = tmp_path / "bloom"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
    ref_tokenizer.save_pretrained(src)
    return src


@pytest.mark.parametrize("step,sets", [
    ("torch_dynamic_int8", []), ("export_onnx", []), ("prune_structured", ["ratio=0.3"]),
    ("distill", ["student_layers=1", "steps=1", "warmup=0"])])
def test_steps_that_need_the_layout_refuse_an_unknown_family(step, sets, bloom_dir, tmp_path,
                                                              capsys):
    assert _compress(bloom_dir, tmp_path / "out", step, *sets) == 2
    err = capsys.readouterr().err
    assert f"{step}: model type 'bloom' is not an architecture slimbench knows" in err
    assert "gpt_neox (gpt_neox), llama (llama, mistral, qwen2), opt (opt)" in err
    assert not (tmp_path / "out").exists()


def test_layout_free_steps_still_work_on_an_unknown_family(bloom_dir, tmp_path):
    # unstructured pruning finds Linears by type, not by name: any causal LM
    assert _compress(bloom_dir, tmp_path / "sparse", "prune_unstructured", "sparsity=0.5") == 0
    sp = _manifest(tmp_path / "sparse").report["sparsity"]
    assert sp["realized"] == pytest.approx(0.5, abs=0.01) and len(sp["per_layer"]) == 4
    # distillation into a same-depth student and casts need no layout either
    assert _compress(bloom_dir, tmp_path / "kd", "distill", f"teacher={bloom_dir}", "steps=2",
                     "warmup=0", "batch_size=2", "seq_len=16", "eval_every=0",
                     "eval_batches=1") == 0
    assert _manifest(tmp_path / "kd").report["training"]["steps"] == 2
    assert _compress(bloom_dir, tmp_path / "bf16", "torch_cast") == 0


def test_unstructured_sparsity_is_realized_on_every_family(family, family_dirs, tmp_path):
    out = tmp_path / "sparse"
    assert _compress(family_dirs[family], out, "prune_unstructured", "sparsity=0.5") == 0
    loaded = load_artifact(str(out))
    arch = arch_of(loaded.model)
    weights = [loaded.model.get_submodule(f"{arch.blocks}.{i}.{name}").weight
               for i in range(2) for name in arch.linears()]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.5, abs=0.01)
    m = _manifest(out)
    assert m.nonzero_parameters < m.parameters


def test_shallow_student_keeps_evenly_spaced_blocks_and_a_working_cache(family,
                                                                       make_family_model):
    parent = make_family_model(family, num_hidden_layers=3)
    arch = arch_of(parent)
    student = shallow_student(parent, 2)  # keeps blocks 0 and 2
    assert n_layers(student.config) == 2 and len(arch.block_list(student)) == 2
    kept = arch.block_list(student)[1].get_submodule(arch.mlp_out).weight
    assert torch.equal(kept, arch.block_list(parent)[2].get_submodule(arch.mlp_out).weight)
    # layer indices renumbered: a KV-cached greedy decode equals recomputing from scratch
    prompt = torch.randint(5, 4000, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cached = student.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True,
                                  pad_token_id=0)
        full = prompt
        for _ in range(8):
            nxt = student(full, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            full = torch.cat([full, nxt], 1)
    assert cached.tolist() == full.tolist()


def test_one_layer_student_distills_from_the_cli(family, family_dirs, tmp_path):
    out = tmp_path / "student"
    code = _compress(family_dirs[family], out, "distill", "student_layers=1", "steps=2",
                     "batch_size=2", "seq_len=16", "warmup=0", "eval_every=0",
                     "eval_batches=1")
    assert code == 0
    m = _manifest(out)
    assert m.report["student_layers"] == 1 and m.report["training"]["steps"] == 2
    # fidelity to the parent, measured on the same prompts as every step's parity
    parity = m.report["parity"]
    assert parity["prompts"] == [4, 64] and 0 <= parity["top1_agreement"] <= 1
    assert parity["max_abs_logit_diff"] > 0
    assert m.parameters < load_artifact(str(family_dirs[family])).info.parameters
    reloaded = load_artifact(str(out))
    assert n_layers(reloaded.model.config) == 1
    assert len(arch_of(reloaded.model).block_list(reloaded.model)) == 1


def test_batched_generation_equals_one_prompt_at_a_time(family, family_dirs):
    rt = TorchRuntime(load_artifact(str(family_dirs[family])))
    prompts = [[11, 12, 13, 14, 15, 16], [21, 22], [31, 32, 33, 34]]
    batched = rt.greedy_generate_batch(copy.deepcopy(prompts), max_new_tokens=6)
    single = [rt.greedy_generate(p, 6) for p in prompts]
    assert batched == single


def test_the_families_suite_times_each_family_in_a_published_shape():
    from pathlib import Path

    from slimbench.bench.orchestrate.suite import load_suite, suite_baselines
    from slimbench.compress.shapes import ShapeSpec

    suite = load_suite(Path(__file__).parent.parent / "bench" / "suites" / "families.yaml")
    families = {arch_of(ShapeSpec.parse(v.model).config()).family for v in suite.variants}
    assert families == {"llama", "gpt_neox", "opt"}
    baselines = suite_baselines(suite)
    assert baselines["llama-135m-ort-int8"] == "llama-135m"
    assert baselines["opt-125m-ort-int8"] == "opt-125m"  # each against its own family's fp32
    assert suite.acceptance["llama-135m-ort-int8"]["decode_ms_per_token"] == {
        "speedup_at_least": 1.5}

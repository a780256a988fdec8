import pytest
import torch

from slimbench.bench.runtimes.torch_runtime import TorchRuntime
from slimbench.compress.loader import load_artifact
from slimbench.errors import UsageError
from slimbench.tasks.generation import postprocess, run_task, stop_token_ids


def test_postprocess():
    assert postprocess("identifier", " read_header(self)", ("(",)) == "read_header"
    assert postprocess("identifier", "(", ("(",)) == ""
    assert postprocess("first_line", "Return the size.\n  more", ("\n", '"""')) == \
        "Return the size."
    assert postprocess("first_line", 'Close it."""\n', ("\n", '"""')) == "Close it."
    body = "\n    The file is read\n    lazily.\n\n    Other."
    assert postprocess("paragraph", body, ('"""',)) == "The file is read lazily."
    assert postprocess("paragraph", "Only this.\"\"\" tail", ('"""',)) == "Only this."


def test_greedy_matches_hf_generate(tiny_dir):
    loaded = load_artifact(str(tiny_dir))
    rt = TorchRuntime(loaded)
    prompt = loaded.tokenizer("def read(self):\n    return")["input_ids"]
    ours = rt.greedy_generate(prompt, 20)
    with torch.no_grad():
        hf = loaded.model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                                   min_new_tokens=20, pad_token_id=0)
    assert ours == hf[0, len(prompt):].tolist()
    # stopping right after a stop token
    stop = frozenset({ours[3]})
    assert rt.greedy_generate(prompt, 20, stop) == ours[: ours.index(ours[3]) + 1]


def test_stop_token_ids(ref_tokenizer):
    ids = stop_token_ids(ref_tokenizer, ("(",))
    assert ids and all("(" in ref_tokenizer.decode([i]) for i in ids)
    assert ref_tokenizer.convert_tokens_to_ids("(") in ids
    assert stop_token_ids(ref_tokenizer, ()) == frozenset()


def test_run_task_shapes_without_tokenizer_refused():
    loaded = load_artifact("shape:gpt2:n_layer=1,n_embd=32,n_head=2")
    with pytest.raises(UsageError, match="needs a tokenizer"):
        run_task(TorchRuntime(loaded), loaded.tokenizer, "method_name", limit=2)


def test_run_task_outputs_examples(tiny_dir):
    loaded = load_artifact(str(tiny_dir))
    res = run_task(TorchRuntime(loaded), loaded.tokenizer, "method_name", limit=3)
    assert res.score.n == 3 and len(res.examples) == 3
    assert res.score.higher_is_better is True and 0.0 <= res.score.value <= 100.0
    assert {"id", "prediction", "reference", "scores"} == set(res.examples[0].to_dict())


def test_batched_greedy_equals_one_by_one(tiny_dir):
    """Left padding + mask + position ids: each row continues exactly as it would alone."""
    loaded = load_artifact(str(tiny_dir))
    rt = TorchRuntime(loaded)
    tok = loaded.tokenizer
    prompts = [tok(t)["input_ids"] for t in ("x", "def read(self):\n    return",
                                              "import os\nclass A:\n    pass\n", "a = [1, 2")]
    alone = [rt.greedy_generate(p, 16) for p in prompts]
    assert len({len(p) for p in prompts}) == 4  # really different lengths
    assert rt.greedy_generate_batch(prompts, 16) == alone
    # per-row stops: a row ends right after its own stop token, the others go on
    stop = frozenset({alone[3][4]})
    cut = [a[: next((i + 1 for i, t in enumerate(a) if t in stop), len(a))] for a in alone]
    assert [len(c) for c in cut] == [16, 16, 16, 5]
    assert rt.greedy_generate_batch(prompts, 16, stop) == cut


@pytest.fixture(scope="module")
def reference_rt():
    loaded = load_artifact("reference")
    return TorchRuntime(loaded), loaded.tokenizer


@pytest.mark.parametrize("task,limit", [("method_name", 16), ("docstring_summary", 8),
                                        ("docstring_body", 6)])
@pytest.mark.slow
def test_batch_1_and_8_identical(reference_rt, task, limit):
    rt, tok = reference_rt
    one = run_task(rt, tok, task, limit=limit, batch_size=1, resamples=100)
    eight = run_task(rt, tok, task, limit=limit, batch_size=8, resamples=100)
    assert one.score.protocol["batch_size"] == 1 and eight.score.protocol["batch_size"] == 8
    assert [e.prediction for e in one.examples] == [e.prediction for e in eight.examples]
    assert one.score.metrics == eight.score.metrics
    assert any(e.prediction for e in eight.examples)  # not vacuously equal


@pytest.mark.slow
def test_unbatched_runtime_falls_back_and_says_so(tiny_dir):
    from slimbench.bench.runtimes.base import RuntimeBase
    from slimbench.tasks.protocol import CausalLM

    class OneByOne(TorchRuntime):  # what OrtRuntime inherits: no batched generation
        batched_generation = False
        greedy_generate_batch = RuntimeBase.greedy_generate_batch

    loaded = load_artifact(str(tiny_dir))
    rt, one_by_one = TorchRuntime(loaded), OneByOne(loaded)
    assert isinstance(one_by_one, CausalLM)
    res = run_task(one_by_one, loaded.tokenizer, "method_name", limit=3, batch_size=8,
                   resamples=0)
    ref = run_task(rt, loaded.tokenizer, "method_name", limit=3, batch_size=8, resamples=0)
    assert res.score.protocol["batch_size"] == 1
    assert res.score.protocol["batch_size_requested"] == 8
    assert "OneByOne has no batched generation" in res.score.protocol["padding"]
    assert ref.score.protocol["batch_size"] == 8
    assert [e.prediction for e in res.examples] == [e.prediction for e in ref.examples]
    assert res.score.ci95 is None and res.score.metrics["f1"].resamples == 0

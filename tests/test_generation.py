import pytest
import torch

from slimbench.bench.torch_runtime import TorchRuntime
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
    assert res["n"] == 3 and len(res["examples"]) == 3
    assert res["higher_is_better"] is True and 0.0 <= res["value"] <= 100.0
    assert {"id", "prediction", "reference"} <= set(res["examples"][0])

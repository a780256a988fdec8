"""Shared fixtures. Tests never touch the network: the HF hub is forced offline."""

import atexit
import json
import math
import os
import shutil
import tempfile

# A private, empty HF cache: tests see neither the network nor the user's cached models.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="slimbench-hf-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ.pop("HF_HUB_CACHE", None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from slimbench.compress.arch import tiny_config as arch_tiny_config  # noqa: E402
from slimbench.compress.arch import tiny_model_types  # noqa: E402
from slimbench.compress.reference import REFERENCE_DIR  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none available")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ref_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(REFERENCE_DIR)


def tiny_config(**kw) -> GPT2Config:
    base = dict(vocab_size=4096, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                eos_token_id=0)
    return GPT2Config(**(base | kw))


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_config()).eval()


@pytest.fixture
def tiny_dir(tmp_path, tiny_model, ref_tokenizer):
    """A local HF directory: tiny random GPT-2 + the reference tokenizer, safetensors."""
    d = tmp_path / "tiny"
    tiny_model.save_pretrained(d)
    ref_tokenizer.save_pretrained(d)
    return d


# One tiny random checkpoint per model type with a tiny config in its family's ``Arch`` entry
# (compress/arch.py: ``tiny``), with the reference tokenizer: 2 layers, width 64, 4 heads
# (Llama-style: 2 KV heads, grouped-query attention). A family added there is tested here.
FAMILIES = tiny_model_types()


def family_config(family: str, **kw):
    return arch_tiny_config(family, **kw)


def family_model(family: str, seed: int = 0, **kw):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(family_config(family, **kw)).eval()


def pytest_generate_tests(metafunc):
    """A test that takes a ``family`` argument runs once per family (tests are imported with
    --import-mode=importlib, so they cannot import FAMILIES from this file)."""
    if "family" in metafunc.fixturenames and not any(
            "family" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")):
        metafunc.parametrize("family", FAMILIES)


@pytest.fixture(scope="session")
def make_family_model():
    """``family_model`` as a fixture: (family, seed=0, **config overrides) -> model."""
    return family_model


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, ref_tokenizer):
    """{family: local HF directory} of seeded tiny random models with the reference
    tokenizer, saved once per session (tests copy or only read them)."""
    root = tmp_path_factory.mktemp("families")
    dirs = {}
    for family in FAMILIES:
        d = root / family
        family_model(family).save_pretrained(d)
        ref_tokenizer.save_pretrained(d)
        dirs[family] = d
    return dirs


@pytest.fixture(scope="session")
def family_exports(family_dirs, tmp_path_factory):
    """(family, attention="ops") -> its fp32 ONNX artifact, written once per session by
    ``slimbench compress --step export_onnx [--set attention=fused]`` run in-process (tests
    only read it: steps write their children elsewhere)."""
    from slimbench.bench.cli import main

    root = tmp_path_factory.mktemp("family-onnx")
    done = {}

    def get(family: str, attention: str = "ops"):
        if (family, attention) not in done:
            out = root / f"{family}-{attention}"
            assert main(["compress", str(family_dirs[family]), "--step", "export_onnx",
                         "--set", f"attention={attention}", "--out", str(out)]) == 0
            done[family, attention] = out
        return done[family, attention]

    return get


# three prompts of different lengths: a padded batch's rows (tests of batched generation)
RAGGED_TEXTS = ("x = 1", "def read(self, n=-1):\n    return self.",
                "import os\nclass A:\n    pass\n")


@pytest.fixture(scope="session")
def ragged_prompts():
    """tokenizer -> the token ids of ``RAGGED_TEXTS`` (checked to differ in length)."""
    def make(tokenizer) -> list[list[int]]:
        prompts = [tokenizer(t)["input_ids"] for t in RAGGED_TEXTS]
        assert len({len(p) for p in prompts}) == 3  # really different lengths
        return prompts

    return make


@pytest.fixture(scope="session")
def cached_greedy():
    """(runtime, prompt, new tokens) -> (tokens, last-position logits of the prefill and of
    every decode step), greedy through ``forward`` and its cache."""
    import numpy as np

    def run(rt, prompt: list[int], new_tokens: int):
        logits, past = rt.forward(np.array([prompt]))
        tokens, steps = [], []
        for _ in range(new_tokens):
            last = logits[0, -1]
            last = last.float().numpy() if isinstance(last, torch.Tensor) else last
            steps.append(last)
            tokens.append(int(last.argmax()))
            logits, past = rt.forward(np.array([[tokens[-1]]]), past)
        return tokens, steps

    return run


# --- a run directory written by the production writers (gate, validate, resume tests) -----------
_TOKENS = [40 + 7 * i for i in range(30)]


def _ppl_examples(nll_per_token: float = 3.0) -> list[dict]:
    return [{"task": "perplexity", "id": f"t{i}", "nll_nats": t * (nll_per_token + 0.01 * i),
             "tokens": t, "bytes": 4 * t} for i, t in enumerate(_TOKENS)]


def _mc_examples() -> list[dict]:
    return [{"task": "mc", "id": f"m{i}", "loglikelihoods": [-10.0 - i % 3, -11.0, -12.5],
             "choice_chars": [5, 6, 7], "reference": i % 2} for i in range(12)]


def _score(task: str, kind: str, metric: str, value: float, n: int, hib: bool) -> dict:
    return {"task": task, "version": "1", "metric": metric, "value": value, "ci95": None,
            "higher_is_better": hib, "n": n, "seconds": 1.0,
            "task_spec": {"kind": kind, "metric_list": [{"metric": metric,
                                                         "higher_is_better": hib}]},
            "metrics": {metric: {"value": value, "ci95": None, "higher_is_better": hib}}}


def _make_run(root, name="a", nll=3.0):
    """A run directory written by the production writers (write_cell, write_tables): one ok
    cell with a perplexity and a multiple-choice task, and the suite that asks for it."""
    from slimbench.bench.orchestrate.runner import write_cell
    from slimbench.reports.output import write_tables
    from slimbench.schema import load_document

    run = root / name
    (run / "cells").mkdir(parents=True)
    ppl, mc = _ppl_examples(nll), _mc_examples()
    ppl_value = math.exp(sum(e["nll_nats"] for e in ppl) / sum(_TOKENS))
    acc = 100 * sum(e["reference"] == 0 for e in mc) / len(mc)  # choice 0 has the top ll
    cell = {"schema_version": 1, "document": "cell", "status": "ok",
            "cell": {"id": "v--cpu", "variant": "v", "model": "reference", "recipe": [],
                     "device": "cpu", "backend": "torch", "content_key": "k1"},
            "quality": {"perplexity": _score("perplexity", "perplexity", "perplexity",
                                             ppl_value, len(ppl), False),
                        "mc": _score("mc", "multiple_choice", "acc", acc, len(mc), True)}}
    write_cell(run, load_document(cell, "test", "cell"), ppl + mc)
    (run / "suite.json").write_text(json.dumps(
        {"name": "t", "devices": ["cpu"], "tasks": ["perplexity", "mc"],
         "variants": [{"name": "v", "model": "reference", "recipe": [], "quality": True}]}))
    write_tables(run)
    return run


@pytest.fixture
def make_run(tmp_path):
    """``make_run(root, name="a", nll=3.0)``: a run directory (see ``_make_run``)."""
    return _make_run


@pytest.fixture(scope="session")
def fuzz_run(tmp_path_factory):
    """One consistent run directory, the template the fuzz tests mutate copies of."""
    return _make_run(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """(step, parent path, **params) -> the step's artifact of that parent, built once per
    session by ``run_step`` (tests only read it)."""
    from slimbench.compress.steps import run_step

    root = tmp_path_factory.mktemp("built")
    done = {}

    def get(step: str, parent, **params):
        key = (step, str(parent), tuple(sorted(params.items())))
        if key not in done:
            done[key] = out = root / f"{step}-{len(done)}"
            run_step(step, params, str(parent), out)
        return done[key]

    return get


@pytest.fixture(scope="session")
def runs_as_torch():
    """(artifact dir, parent dir, backend) -> None: asserts that the artifact's runtime is its
    fp32 torch parent: perplexity within 1e-4 relative, greedy tokens identical one prompt at
    a time and batched, log-probs within 1e-4 (the bar for another engine's fp32 export)."""
    import numpy as np

    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import load_artifact
    from slimbench.tasks.evalsets import load_evalset
    from slimbench.tasks.perplexity import perplexity

    prompts = [[5, 17, 300, 2], [9, 8, 7, 6, 5, 4, 3], [1000]]

    def check(artifact, parent_dir, backend: str) -> None:
        rt = make_runtime(load_artifact(str(artifact)), threads=2)
        parent = load_artifact(str(parent_dir))
        torch_rt = make_runtime(parent)
        assert rt.backend == backend and rt.vocab_size == torch_rt.vocab_size
        texts = [r["text"] for r in load_evalset("lm_stdlib", limit=8)]
        want = perplexity(torch_rt, parent.tokenizer, texts).perplexity
        assert perplexity(rt, parent.tokenizer, texts).perplexity == pytest.approx(want,
                                                                                   rel=1e-4)
        greedy = [torch_rt.greedy_generate(p, 16) for p in prompts]
        assert [rt.greedy_generate(p, 16) for p in prompts] == greedy
        assert rt.greedy_generate_batch(prompts, 16) == greedy
        for a, b in zip(rt.token_logprobs(prompts[:2]), torch_rt.token_logprobs(prompts[:2]),
                        strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)

    return check

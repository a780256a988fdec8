"""Shared fixtures. Tests never touch the network: the HF hub is forced offline."""

import atexit
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

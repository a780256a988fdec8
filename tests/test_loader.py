import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTConfig, ViTModel

from slimbench.compress.loader import LoadOptions, load_artifact
from slimbench.errors import ModelLoadError, UsageError


def _logits(model, ids=(5, 17, 99, 3)):
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits


def test_local_dir_loads_safetensors(tiny_dir, tiny_model):
    loaded = load_artifact(str(tiny_dir))
    assert loaded.info.kind == "local" and loaded.info.random_weights is False
    assert loaded.info.bytes_on_disk == (tiny_dir / "model.safetensors").stat().st_size
    assert len(loaded.info.weights_sha256) == 64
    assert torch.allclose(_logits(loaded.model), _logits(tiny_model), atol=0)
    assert loaded.tokenizer is not None


def test_missing_path():
    with pytest.raises(ModelLoadError, match=r"model path './no/such/dir' does not exist"):
        load_artifact("./no/such/dir")


def test_file_and_non_hf_dir(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file; expected a Hugging Face model directory"):
        load_artifact(str(f))
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_artifact(str(tmp_path))


def test_pickle_only_refused_unless_allowed(tiny_dir, tiny_model):
    (tiny_dir / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), tiny_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"only pickle weights \(pytorch_model.bin\).*"
                                             r"--allow-pickle"):
        load_artifact(str(tiny_dir))
    loaded = load_artifact(str(tiny_dir), LoadOptions(allow_pickle=True))
    assert torch.allclose(_logits(loaded.model), _logits(tiny_model), atol=0)


def test_no_weights(tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"holds no weights"):
        load_artifact(str(tiny_dir))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tiny_dir, damage):
    f = tiny_dir / "model.safetensors"
    blob = f.read_bytes()
    f.write_bytes(blob[: len(blob) // 2] if damage == "truncate" else b"\x08\x00" + b"junk" * 9)
    with pytest.raises(ModelLoadError, match=r"corrupt safetensors file .*model.safetensors"):
        load_artifact(str(tiny_dir))


def test_missing_tensor_is_an_error_not_random_init(tiny_dir):
    f = tiny_dir / "model.safetensors"
    tensors = load_file(f)
    del tensors["transformer.h.0.attn.c_attn.weight"]
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"1 weights missing.*h.0.attn.c_attn.weight"):
        load_artifact(str(tiny_dir))


def test_not_a_causal_lm(tmp_path):
    d = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, image_size=32, patch_size=16)).save_pretrained(d)
    with pytest.raises(ModelLoadError, match="is a 'vit' model, not a causal LM"):
        load_artifact(str(d))


def test_bad_options():
    with pytest.raises(UsageError, match="unknown dtype 'fp8'"):
        LoadOptions(dtype="fp8")
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        LoadOptions(device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_clear_error(tiny_dir):
    with pytest.raises(UsageError, match="no CUDA GPU is available"):
        load_artifact(str(tiny_dir), LoadOptions(device="cuda"))


def _fake_hub_snapshot(src: Path, repo: str) -> None:
    """Lay ``src`` out as the HF hub cache does for a downloaded ``repo`` at ``main``."""
    cache = Path(os.environ["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    snap = cache / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)


def test_hub_id_resolves_from_local_cache(tiny_dir, tiny_model):
    _fake_hub_snapshot(tiny_dir, "slimbench-test/tiny-gpt2")
    loaded = load_artifact("slimbench-test/tiny-gpt2")
    assert loaded.info.kind == "hub" and loaded.tokenizer is not None
    assert loaded.info.bytes_on_disk == (tiny_dir / "model.safetensors").stat().st_size
    assert torch.allclose(_logits(loaded.model), _logits(tiny_model), atol=0)


def test_unknown_hub_id_offline():
    with pytest.raises(ModelLoadError, match=r"no local directory 'nobody/nothing', and loading "
                                             r"it as a Hugging Face hub id failed"):
        load_artifact("nobody/nothing")


def test_dir_without_tokenizer_files_has_no_tokenizer(tmp_path, tiny_model):
    d = tmp_path / "no-tok"
    tiny_model.save_pretrained(d)
    assert load_artifact(str(d)).tokenizer is None

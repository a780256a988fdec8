"""The reference build script is deterministic: same inputs, same bytes."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _build(out: Path) -> dict:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "train_reference.py"), "--steps", "3",
                    "--batch", "2", "--max-files", "4", "--threads", "1", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest()
            for f in ("model.safetensors", "tokenizer.json", "config.json")}


@pytest.mark.slow
def test_train_reference_is_deterministic(tmp_path):
    a = _build(tmp_path / "a")
    b = _build(tmp_path / "b")
    assert a == b

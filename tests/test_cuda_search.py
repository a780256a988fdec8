"""``slimbench search --device cuda`` on two candidates of the default CUDA space (torch fp16,
ORT fused fp16 on the CUDA execution provider): screened, timed paired on the GPU and
confirmed; skipped cleanly (conftest) where torch sees no GPU."""

import pytest

from slimbench.bench.cli import main
from slimbench.schema import load_file

pytestmark = pytest.mark.cuda

BUDGET = ("perplexity.perplexity: {non_inferior: 0.02}\n"
          "next_line.acc: {no_significant_loss: 5, mode: absolute}\n")
SPACE = ("candidates:\n  - {torch_cast: {dtype: float16}}\n"
         "  - [{export_onnx: {attention: fused}}, ort_fp16]\n")


def test_a_cuda_search_times_on_the_gpu_and_confirms(tmp_path, capsys):
    (tmp_path / "budget.yaml").write_text(BUDGET)
    (tmp_path / "space.yaml").write_text(SPACE)
    out = tmp_path / "s"
    rc = main(["search", "reference", "--device", "cuda", "--budget",
               str(tmp_path / "budget.yaml"), "--space", str(tmp_path / "space.yaml"),
               "--out", str(out), "--tune-limit", "48", "--test-limit", "48",
               "--ab-seconds", "3"])
    err = capsys.readouterr().err
    result = load_file(out / "search.json", "search")
    assert result.device == "cuda" and result.environment.get("gpu"), err
    by = {c.name: c for c in result.candidates}
    for c in by.values():  # fp16 keeps the reference's quality: both pass screening
        assert c.status in ("winner", "screened", "not_confirmed", "rejected"), (c.name, c.why)
        assert c.screening and all(s.status == "pass" for s in c.screening), (c.name, c.why)
        assert c.speed is not None and c.speed.pairs > 0, (c.name, c.why)
    assert rc == (0 if result.winner else 1)
    if result.winner:
        assert all(t.status == "pass" for t in by[result.winner].confirmation)

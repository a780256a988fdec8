"""The typed manifest records write exactly the manifest JSON slimbench has always written, and
read every manifest back as it is on disk (``compress/manifest.py``)."""

import json

import pytest

from slimbench.compress.artifact import MANIFEST, finish_manifest, read_manifest, verify_files
from slimbench.compress.manifest import Manifest, Parity, StepReport
from slimbench.compress.quant_ort import OnnxInt8Audit, StaticCalibration
from slimbench.errors import UsageError

PARITY = Parity(max_abs_logit_diff=0.5, mean_abs_logit_diff=0.1, top1_agreement=0.9,
                greedy_identical=2, greedy_prompts=2, greedy_new_tokens=16, prompts=[4, 64])


def test_parity_leaves_out_what_was_not_measured():
    assert set(PARITY.to_dict()) == {"max_abs_logit_diff", "mean_abs_logit_diff",
                                     "top1_agreement", "greedy_identical", "greedy_prompts",
                                     "greedy_new_tokens", "prompts"}
    decode = Parity(**PARITY.to_dict(), decode_max_abs_logit_diff=1e-6).to_dict()
    assert decode["decode_max_abs_logit_diff"] == 1e-6 and "padded_max_abs_logit_diff" not in decode


def test_step_report_writes_the_fields_each_step_always_wrote():
    audit = OnnxInt8Audit(blocks=2, layers=2, expected_per_block=4, block_matmuls=8,
                          block_matmuls_int8=8, per_block_int8={"0": 4, "1": 4}, lm_head="int8",
                          float_weight_matmuls_left=0)
    onnx = StepReport(format="onnx", onnx_file="model.onnx", opset=None, parameters=10,
                      nonzero_parameters=9, dtypes={"weights": "int8"}, graph={"MatMul": 3},
                      quantization=audit, bytes_vs_parent=0.3, parity=PARITY).to_dict()
    assert onnx == {"format": "onnx", "onnx_file": "model.onnx", "opset": None,
                    "parameters": 10, "nonzero_parameters": 9, "dtypes": {"weights": "int8"},
                    "graph": {"MatMul": 3}, "bytes_vs_parent": 0.3,
                    "quantization": audit.to_dict(), "parity": PARITY.to_dict()}
    assert "calibration" not in onnx["quantization"]  # dynamic int8 has none
    static = OnnxInt8Audit(**{**audit.to_dict(), "calibration": StaticCalibration(
        "minmax", 2, 16, None, None, "corpus train split")})
    assert static.to_dict()["calibration"]["num_bins"] is None  # written as null, as always
    hf = StepReport(format="hf", parameters=1, nonzero_parameters=1, dtypes={}).to_dict()
    assert hf == {"format": "hf", "parameters": 1, "nonzero_parameters": 1, "dtypes": {}}


def test_a_manifest_round_trips_exactly(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    fields = {"step": "toy", "config": {"a": 1}, "recipe": ["toy"],
              "parent": {"spec": "reference", "weights_sha256": "ab", "manifest_sha256": None,
                         "parameters": 5},
              "random_weights": False, **StepReport(format="hf", parameters=5,
                                                    nonzero_parameters=5, dtypes={"weights":
                                                                                  "float32"},
                                                    parity=PARITY).to_dict()}
    written = finish_manifest(tmp_path, fields)
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert written.to_dict() == on_disk and read_manifest(tmp_path) == written
    assert written.parent.parameters == 5 and written.files["model.safetensors"].bytes == 7
    assert written.report["parity"] == PARITY.to_dict() and written.parameters == 5
    assert verify_files(tmp_path, written) == []
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    assert verify_files(tmp_path, written) == ["model.safetensors's sha256 differs from the "
                                               "manifest's"]


def test_manifests_not_written_by_run_step_read_as_they_are(tmp_path):
    # a bare manifest (tests write such) and one from before manifest_sha256 was recorded
    finish_manifest(tmp_path, {"recipe": ["step"]})
    bare = json.loads((tmp_path / MANIFEST).read_text())
    assert read_manifest(tmp_path).to_dict() == bare and "step" not in bare
    old = {**bare, "step": "torch_dynamic_int8", "parent": {"spec": "r", "weights_sha256": None,
                                                            "parameters": 3}}
    assert Manifest.from_dict(old, "old").parent.manifest_sha256 is None


@pytest.mark.parametrize("change, message", [
    ({"slimbench_artifact": 2}, "version 2, expected 1"),
    ({"files": []}, "not a mapping with a 'files' table"),
    ({"files": {"m": {"bytes": "7", "sha256": "ab"}}}, "files.m.bytes must be an integer"),
    ({"recipe": "toy"}, "recipe"),
])
def test_a_malformed_manifest_is_refused_by_name(tmp_path, change, message):
    data = {"slimbench_artifact": 1, "files": {}, "bytes_on_disk": 0, "recipe": []} | change
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(UsageError, match=message):
        read_manifest(tmp_path)

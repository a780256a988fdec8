"""The family x step table: every recipe step run from the CLI on a tiny random checkpoint of
each architecture family, with what its manifest proves (coverage, sparsity, shapes, parity).

Each family's checkpoint is seeded random weights (``tiny_config`` of ``compress/arch.py``: 2
layers, width 64, 4 heads; Llama-style with 2 KV heads) saved by ``save_pretrained`` with the
embedded reference's tokenizer, the way a user's local directory looks. A step that fails is
reported with the first line of its error. The last column is the perplexity task on the fp32
ONNX export (ONNX Runtime) against the torch checkpoint it came from, as a relative difference.

    python scripts/family_matrix.py [--out table.md] [--families llama,opt]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import torch

# (column, steps applied in order from the checkpoint: (step, [KEY=VALUE, ...]))
STEPS = [
    ("torch int8", [("torch_dynamic_int8", [])]),
    ("export", [("export_onnx", [])]),
    ("ORT optimize", [("export_onnx", []), ("ort_optimize", [])]),
    ("ORT int8", [("export_onnx", []), ("ort_dynamic_int8", [])]),
    ("ORT static int8", [("export_onnx", []), ("ort_static_int8", ["samples=4",
                                                                    "seq_len=32"])]),
    ("ORT fp16", [("export_onnx", []), ("ort_fp16", [])]),
    ("torch bf16", [("torch_cast", [])]),
    ("unstructured 50%", [("prune_unstructured", ["sparsity=0.5"])]),
    ("structured 30%", [("prune_structured", ["ratio=0.3"])]),
    ("1-layer student", [("distill", ["student_layers=1", "steps=4", "batch_size=2",
                                      "seq_len=32", "warmup=0", "eval_every=0",
                                      "eval_batches=1"])]),
]


def make_checkpoint(family: str, root: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimbench.compress.arch import tiny_config
    from slimbench.compress.reference import REFERENCE_DIR

    torch.manual_seed(0)
    config = tiny_config(family)
    out = root / family
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(REFERENCE_DIR).save_pretrained(out)
    return out


def run_cli(args: list[str]) -> tuple[int, str]:
    """``slimbench ARGS`` in this process; (exit code, stderr)."""
    from slimbench.bench.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue()


def summary(manifest: dict) -> str:
    """What the manifest proves, in a few words."""
    parts = []
    q = manifest.get("quantization")
    if q and "block_linears_int8" in q:
        parts.append(f"{q['block_linears_int8']}/{q['block_linears']} block linears int8")
    elif q and "block_matmuls_int8" in q:
        parts.append(f"{q['block_matmuls_int8']}/{q['block_matmuls']} block MatMuls int8")
    st = manifest.get("structure")
    if st:
        heads = st.get("heads")
        kv = st.get("kv_heads")
        shape = f"heads {heads[0]}→{heads[1]}" if heads else ""
        if kv and kv[0] != heads[0]:
            shape += f" (KV {kv[0]}→{kv[1]})"
        parts.append(f"{shape}, params ×{st['parameter_ratio']:.2f}, reloads")
    sp = manifest.get("sparsity")
    if sp:
        parts.append(f"{sp['realized']:.1%} of {len(sp['per_layer'])} block layers' weights "
                     "zero")
    if manifest.get("student_layers"):
        parts.append(f"{manifest['student_layers']} layer, "
                     f"{manifest['parameters'] / 1e3:.0f} k params")
    fusions = manifest.get("fusions")
    if fusions is not None:
        applied = fusions.get("applied", {})
        parts.append(", ".join(f"{k}×{v}" for k, v in applied.items()) or "no fusion applied")
    p = manifest.get("parity")
    if p:
        parts.append(f"Δlogits {p['max_abs_logit_diff']:.1e}, greedy "
                     f"{p['greedy_identical']}/{p['greedy_prompts']}")
    return "ok: " + "; ".join(parts)


def run_steps(src: Path, steps: list, work: Path) -> tuple[str, Path | None]:
    current = src
    for i, (step, sets) in enumerate(steps):
        out = work / f"{i}-{step}"
        if out.exists():  # shared prefix (the export) already made
            current = out
            continue
        args = ["compress", str(current), "--step", step, "--out", str(out)]
        for s in sets:
            args += ["--set", s]
        code, err = run_cli(args)
        if code != 0:
            reason = next((line for line in err.splitlines() if line.strip()), "no message")
            return f"refused (exit {code}): {reason.strip()}", None
        current = out
    manifest = json.loads((current / "manifest.json").read_text())
    return summary(manifest), current


def perplexity(spec: str) -> float:
    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import load_artifact
    from slimbench.tasks.generation import run_task
    from slimbench.tasks.specs import resolve_task

    loaded = load_artifact(spec)
    res = run_task(make_runtime(loaded, 2), loaded.tokenizer, resolve_task("perplexity"), 20,
                   resamples=0)
    return res.score.value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--families", help="comma-separated model types (default: every one "
                                           "with a tiny config in compress/arch.py)")
    args = parser.parse_args()
    from slimbench.compress.arch import tiny_model_types

    families = args.families.split(",") if args.families else tiny_model_types()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimbench-families-") as tmp:
        root = Path(tmp)
        for family in families:
            src = make_checkpoint(family, root / "src")
            cells, export = [], None
            for column, steps in STEPS:
                text, out = run_steps(src, steps, root / family)
                if column == "export":
                    export = out
                cells.append(text)
                print(f"{family:<9} {column:<17} {text}", file=sys.stderr)
            if export is not None:
                a, b = perplexity(str(src)), perplexity(str(export))
                cells.append(f"{abs(b - a) / a:.1e} ({a:.2f})")
            else:
                cells.append("no export")
            rows.append((family, cells))
    header = ["family", *(c for c, _ in STEPS), "ppl ORT fp32 vs torch (rel.)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([f, *cells]) + " |" for f, cells in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The engines table of a ``slimbench run bench/suites/engines.yaml`` run: decode ms/token per
architecture (rows: engine and format; columns: gpt2, llama-135m, the reference), the
reference's perplexity and each artifact's bytes on disk, read from the run's summary.csv.

    python scripts/engines_table.py runs/engines
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

MODELS = {"gpt2": "gpt2-124M", "llama-135m": "llama-135m", "ref": "reference"}
FORMATS = {"": "torch fp32", "torch-int8": "torch int8 (+ embeddings)", "ort-int8": "ORT int8",
           "ort-int4": "ORT int4", "ov-fp32": "OpenVINO fp32", "ov-int8": "OpenVINO int8",
           "ov-int4": "OpenVINO int4", "ct2-fp32": "CTranslate2 fp32",
           "ct2-int8": "CTranslate2 int8", "genai-int8": "ORT GenAI int8",
           "genai-int4": "ORT GenAI int4"}


def split(variant: str) -> tuple[str, str]:
    """(architecture, format) of an engines.yaml variant name."""
    if variant == "baseline":
        return "ref", ""
    for model in MODELS:
        if variant == model or variant.startswith(model + "-"):
            return model, variant[len(model) + 1:]
    raise SystemExit(f"unknown variant {variant!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    rows = pd.read_csv(args.run / "summary.csv")
    rows[["model", "format"]] = rows["variant"].apply(lambda v: pd.Series(split(v)))
    decode = rows.pivot(index="format", columns="model", values="decode_ms_per_token@128")
    size = rows.pivot(index="format", columns="model", values="model_bytes_on_disk") / 1e6
    table = pd.DataFrame({f"{MODELS[m]} ms/token": decode.get(m) for m in MODELS})
    table["reference perplexity"] = rows[rows.model == "ref"].set_index("format")[
        "perplexity.perplexity"]
    for m in ("gpt2", "llama-135m"):
        table[f"{MODELS[m]} MB"] = size.get(m)
    table.index = [FORMATS.get(f, f) for f in table.index]
    order = [FORMATS[f] for f in FORMATS if FORMATS[f] in table.index]
    print(table.loc[order].round(2).to_markdown())


if __name__ == "__main__":
    main()

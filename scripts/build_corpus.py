"""Build the embedded corpus and evaluation sets from the Python standard library.

Run once by the maintainers (the outputs are committed):

    .venv/bin/python scripts/build_corpus.py [--stdlib DIR]

Outputs, all under ``tasks/data/``:
  corpus/stdlib.jsonl.xz   every selected stdlib file: {"path", "split", "text"}
  corpus/LICENSE-PSF.txt   the PSF license the text is shipped under
  corpus/manifest.json     source, Python version, file/char counts, sha256
  evalsets/*.jsonl         held-out evaluation sets, built from validation files only
  evalsets/manifest.json   per set: source, count, sha256, bytes, description

The split is by *file*, decided by a salted sha256 of the path (no RNG state, so the same
stdlib always gives the same split). Evaluation sets come only from validation files, so the
reference model never trained on them.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import lzma
import random
import re
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tasks" / "data"
SPLIT_SALT = "slimbench-split-v1"
VALIDATION_PERCENT = 12
# Folders that are tests, GUIs, data tables or vendored trees rather than ordinary library code.
EXCLUDED_DIRS = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "encodings",
    "pydoc_data", "site-packages", "lib-dynload", "__pycache__", "__phello__",
}
PROMPT_CONTEXT_CHARS = 700  # left context kept before a `def`; the runtime left-truncates further
LM_CHUNK_CHARS = 1500
PER_SET = 300


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_of(rel: str) -> str:
    h = int(hashlib.sha256(f"{SPLIT_SALT}:{rel}".encode()).hexdigest()[:8], 16)
    return "validation" if h % 100 < VALIDATION_PERCENT else "train"


def select_files(stdlib: Path) -> list[tuple[str, str]]:
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).as_posix()
        parts = rel.split("/")
        if any(p in EXCLUDED_DIRS or p.startswith("config-") for p in parts[:-1]):
            continue
        if parts[-1].startswith("_sysconfigdata"):
            continue
        text = path.read_text(encoding="utf-8", errors="strict")
        if text.strip():
            files.append((rel, text))
    return files


def lm_chunks(rel: str, text: str) -> list[str]:
    """Cut a file into ~LM_CHUNK_CHARS pieces at line boundaries."""
    chunks, cur = [], ""
    for line in text.splitlines(keepends=True):
        cur += line
        if len(cur) >= LM_CHUNK_CHARS:
            chunks.append(cur)
            cur = ""
    if len(cur) >= LM_CHUNK_CHARS // 3:
        chunks.append(cur)
    return chunks


def _line_offsets(text: str) -> list[int]:
    offsets, pos = [], 0
    for line in text.splitlines(keepends=True):
        offsets.append(pos)
        pos += len(line)
    offsets.append(pos)
    return offsets


def _context_before(text: str, end: int) -> str:
    start = max(0, end - PROMPT_CONTEXT_CHARS)
    # start on a line boundary so prompts never open mid-token
    nl = text.find("\n", start)
    if start > 0 and 0 <= nl < end:
        start = nl + 1
    return text[start:end]


def function_examples(rel: str, text: str) -> tuple[list, list, list]:
    """Method-name, docstring-summary and docstring-body examples for one validation file."""
    tree = ast.parse(text)
    offs = _line_offsets(text)
    names, summaries, bodies = [], [], []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        def_line = offs[node.lineno - 1]
        line_text = text[def_line: offs[node.lineno]]
        m = re.match(r"(\s*)(async\s+)?def\s+", line_text)
        if not m:
            continue
        # Prompts never end in whitespace: byte-level BPE attaches a word's leading space to the
        # word, so a prompt ending in "def " leaves the model an out-of-distribution lone space.
        name_at = def_line + m.end() - 1
        if not node.name.startswith("__"):
            names.append({"path": rel, "prompt": _context_before(text, name_at),
                          "target": node.name})
        doc = ast.get_docstring(node, clean=True)
        first = node.body[0]
        if not doc or not isinstance(first, ast.Expr):
            continue
        raw_start = offs[first.lineno - 1] + first.col_offset
        raw = text[raw_start: raw_start + 4]
        if not raw.startswith('"""'):
            continue
        summary, _, rest = doc.partition("\n")
        summary = summary.strip()
        if len(summary.split()) >= 3:  # shorter "summaries" are mostly labels, not sentences
            summaries.append({"path": rel, "prompt": _context_before(text, raw_start + 3),
                              "target": summary, "name": node.name})
        body = rest.strip().split("\n\n")[0]
        body_words = body.split()
        if rest.startswith("\n") and summary and 5 <= len(body_words) <= 100:
            # prompt: up to the end of the summary line. The model writes the blank line and
            # indent itself: BPE merges "\n\n" with the indent, so a prompt cut inside that
            # whitespace run would end on a token the model never saw there.
            raw_doc = text[raw_start:]
            if re.match(r'"""[^\n]*\n[ \t]*\n', raw_doc) is None:
                continue
            p_end = raw_start + raw_doc.index("\n")
            bodies.append({"path": rel, "prompt": _context_before(text, p_end),
                           "target": " ".join(body_words), "summary": summary})
    return names, summaries, bodies


def write_jsonl(path: Path, rows: list[dict]) -> bytes:
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    blob = data.encode("utf-8")
    path.write_bytes(blob)
    return blob


def sample(rows: list[dict], k: int, prefix: str) -> list[dict]:
    rows = random.Random(0).sample(rows, min(k, len(rows)))
    rows.sort(key=lambda r: (r["path"], r.get("prompt", r.get("text", ""))))
    return [{"id": f"{prefix}-{i:04d}", **r} for i, r in enumerate(rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    args = ap.parse_args()
    stdlib = args.stdlib.resolve()
    files = select_files(stdlib)
    version = ".".join(map(str, sys.version_info[:3]))
    source = f"CPython {version} standard library ({stdlib.name}/*.py)"

    corpus_dir = DATA / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"path": rel, "split": split_of(rel), "text": text} for rel, text in files]
    jsonl = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    # preset 9 + fixed filter chain gives the same bytes for the same input
    blob = lzma.compress(jsonl.encode("utf-8"), preset=9)
    (corpus_dir / "stdlib.jsonl.xz").write_bytes(blob)
    shutil.copyfile(stdlib / "LICENSE.txt", corpus_dir / "LICENSE-PSF.txt")
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "validation")}
    chars = {s: sum(len(r["text"]) for r in rows if r["split"] == s) for s in counts}
    manifest = {
        "source": source, "python_version": version, "license": "PSF-2.0 (LICENSE-PSF.txt)",
        "split_rule": f"sha256('{SPLIT_SALT}:'+path) % 100 < {VALIDATION_PERCENT} -> validation",
        "excluded_dirs": sorted(EXCLUDED_DIRS), "files": counts, "chars": chars,
        "file": "stdlib.jsonl.xz", "sha256": sha256_bytes(blob),
        "uncompressed_sha256": sha256_bytes(jsonl.encode("utf-8")),
    }
    (corpus_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    val = [(r["path"], r["text"]) for r in rows if r["split"] == "validation"]
    lm, names, summaries, bodies = [], [], [], []
    for rel, text in val:
        lm += [{"path": rel, "text": c} for c in lm_chunks(rel, text)]
        n, s, b = function_examples(rel, text)
        names += n
        summaries += s
        bodies += b
    sets = {
        "lm_stdlib": (sample(lm, PER_SET, "lm"),
                      "held-out stdlib source chunks for perplexity / bits-per-byte"),
        "method_name": (sample(names, PER_SET, "mn"),
                        "preceding source + 'def' -> function name; subtoken F1"),
        "docstring_summary": (sample(summaries, PER_SET, "ds"),
                              "context + signature + '\"\"\"' -> docstring summary line; BLEU"),
        "docstring_body": (sample(bodies, PER_SET, "db"),
                           "signature + summary line -> first docstring paragraph; ROUGE"),
    }
    eval_dir = DATA / "evalsets"
    eval_dir.mkdir(parents=True, exist_ok=True)
    emanifest = {}
    for name, (set_rows, desc) in sets.items():
        blob = write_jsonl(eval_dir / f"{name}.jsonl", set_rows)
        emanifest[name] = {"file": f"{name}.jsonl", "count": len(set_rows), "bytes": len(blob),
                           "sha256": sha256_bytes(blob), "description": desc,
                           "source": source + ", validation split only",
                           "license": "PSF-2.0 (../corpus/LICENSE-PSF.txt)"}
    (eval_dir / "manifest.json").write_text(json.dumps(emanifest, indent=2) + "\n")
    print(json.dumps({"corpus": manifest["files"], "chars": chars,
                      "evalsets": {k: v["count"] for k, v in emanifest.items()},
                      "eval_bytes": sum(v["bytes"] for v in emanifest.values()),
                      "corpus_xz_bytes": len((corpus_dir / "stdlib.jsonl.xz").read_bytes())}))


if __name__ == "__main__":
    main()

"""Build the embedded multiple-choice set ``next_line`` from the held-out validation files.

Run by the maintainers after ``scripts/build_corpus.py`` (``make reference`` runs both; the
output is committed):

    .venv/bin/python scripts/build_mc_set.py

Each example is a place in a validation file: the source before a line (at most
``CONTEXT_CHARS`` characters, starting on a line boundary) and four candidate lines, the true
next line and three lines of similar length from *other* validation files, all with the true
line's indentation, in a shuffled order. A model that reads code picks the true line by its
log-likelihood; a uniform guess is right 25% of the time.

Why this design: it was measured against two others on 200 examples each with the reference
(the same scoring, ``kind: multiple_choice``): "which of four docstring summaries belongs to
this function" scored 31.5% [25.0, 38.0] and "which of four names follows ``def``" 28.5%
[22.5, 34.5] (acc_norm 37.5%), both too close to chance for a 2.6M-parameter model; the next
line scored 48.5% [42.0, 55.0] (700 characters of context). The committed set: 49.25%
[44.25, 54.50] on all 400 (``slimbench eval reference --task next_line``).

Everything comes from ``tasks/data/corpus`` (validation split only) and one seeded
``random.Random``: the same corpus gives the same bytes. Writes
``tasks/data/evalsets/next_line.jsonl`` and its entry in ``evalsets/manifest.json`` (other
entries are kept as they are).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVALSETS = ROOT / "tasks" / "data" / "evalsets"
NAME = "next_line"
SEED = 0
COUNT = 400
CHOICES = 4
# ~75 tokens: the reference scored the same with 250 (49.0%) and 400 characters (49.2%) as with
# 700, and every choice reads the context again, so a short one keeps the task cheap
CONTEXT_CHARS = 300
MIN_OFFSET = 300  # a line needs a whole context before it
MIN_CHARS = 12  # shorter lines ("pass", "else:", "return x") carry little signal
LENGTH_BAND = (0.8, 1.25)  # distractors' length relative to the true line: no length cue


def candidates(path: str, text: str) -> list[dict]:
    """Every line of one file that can be asked about: its context, the whitespace between
    the context and the line (newlines and indentation), and its content."""
    out, offset = [], 0
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        start, offset = offset, offset + len(line)
        content = line.strip()
        if start < MIN_OFFSET or len(content) < MIN_CHARS or content.startswith(
                ("#", '"', "'")):
            continue
        begin = max(0, start - CONTEXT_CHARS)
        newline = text.find("\n", begin)
        if begin > 0 and 0 <= newline < start:
            begin = newline + 1  # start on a line boundary: prompts never open mid-token
        before = text[begin:start]
        prompt = before.rstrip()
        if not prompt:
            continue
        indent = line[: len(line) - len(line.lstrip())]
        # prompts end on a non-space: the gap (newlines, indentation) is a field of its own,
        # which the task's prompt template appends and the scorer moves into the continuation
        out.append({"path": path, "line": number, "prompt": prompt,
                    "sep": before[len(prompt):] + indent, "target": content})
    return out


def build(rows: list, seed: int = SEED, count: int = COUNT) -> list[dict]:
    """``count`` examples from the candidate lines of the validation files (``CorpusFile``s),
    shuffled."""
    rng = random.Random(seed)
    pool = [c for r in rows for c in candidates(r.path, r.text)]
    by_length: dict[int, list[dict]] = {}
    for c in pool:
        by_length.setdefault(len(c["target"]), []).append(c)
    examples = []
    for i, item in enumerate(rng.sample(pool, count)):
        n = len(item["target"])
        lo, hi = int(n * LENGTH_BAND[0]), int(n * LENGTH_BAND[1])
        others = sorted({c["target"] for k in range(lo, hi + 1) for c in by_length.get(k, [])
                         if c["path"] != item["path"] and c["target"] != item["target"]})
        choices = rng.sample(others, CHOICES - 1) + [item["target"]]
        rng.shuffle(choices)
        examples.append({"id": f"nl-{i:04d}", "path": item["path"], "line": item["line"],
                         "prompt": item["prompt"], "sep": item["sep"], "choices": choices,
                         "label": choices.index(item["target"])})
    return examples


def to_jsonl(examples: list[dict]) -> bytes:
    """The committed bytes of a set: one sorted-key JSON object per line."""
    return "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n"
                   for e in examples).encode("utf-8")


def main() -> None:
    from slimbench.tasks.corpus import load_corpus

    validation = load_corpus("validation")  # held-out files only, in path order
    examples = build(validation)
    blob = to_jsonl(examples)
    (EVALSETS / f"{NAME}.jsonl").write_bytes(blob)
    manifest_path = EVALSETS / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    corpus = json.loads((ROOT / "tasks" / "data" / "corpus" / "manifest.json").read_text())
    manifest[NAME] = {
        "file": f"{NAME}.jsonl", "count": len(examples), "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "description": f"source before a line -> which of {CHOICES} lines comes next (the "
                       "others: lines of similar length from other files); accuracy, chance "
                       f"{100 / CHOICES:g}%",
        "source": corpus["source"] + ", validation split only",
        "license": "PSF-2.0 (../corpus/LICENSE-PSF.txt)",
        "builder": f"scripts/build_mc_set.py (seed {SEED})",
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({NAME: len(examples), "bytes": len(blob),
                      "files": len({e["path"] for e in examples})}))


if __name__ == "__main__":
    main()

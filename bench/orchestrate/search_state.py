"""What a search keeps on disk as it goes, so that ``--resume`` redoes nothing already decided.

    OUT/state/search.json           what was asked: model, device, threads, objective, budget,
                                    the candidates' recipes; a resume must ask the same
    OUT/state/<name>.json           a candidate's record so far (``schema.search.Candidate``),
                                    rewritten after each stage it passes
    OUT/state/baseline.<split>.jsonl  the baseline's per-example outputs (``*.examples.jsonl``
                                    records) on tune / test, scored once

Every file is written atomically after the work it records, so a search killed at any moment
resumes from its last finished stage; artifacts come back from the content-addressed cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimbench import atomic
from slimbench.errors import UsageError
from slimbench.files import read_json
from slimbench.schema.search import Candidate


class SearchState:
    """The ``OUT/state`` folder of one search."""

    def __init__(self, out: Path, asked: dict[str, Any], resume: bool) -> None:
        self.root = out / "state"
        marker = self.root / "search.json"
        if marker.is_file():
            if not resume:
                raise UsageError(f"{out} holds a search already: give --resume to go on with "
                                 "it, or another --out")
            before = read_json(marker, "search state")
            if before != json.loads(json.dumps(asked)):
                changed = sorted(k for k in set(before) | set(asked)
                                 if before.get(k) != json.loads(json.dumps(asked.get(k))))
                raise UsageError(f"{out}: --resume of a search that asked something else "
                                 f"(differs in: {', '.join(changed)}); use another --out")
        elif out.exists() and any(out.iterdir()):
            raise UsageError(f"{out} exists and is not a search's folder: give a new --out")
        self.root.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            atomic.write_json(marker, asked)

    def candidate(self, name: str) -> Candidate | None:
        path = self.root / f"{name}.json"
        return Candidate.from_dict(read_json(path, "search state")) if path.is_file() else None

    def save(self, candidate: Candidate) -> None:
        atomic.write_json(self.root / f"{candidate.name}.json", candidate.to_dict())

    def examples(self, side: str, split: str) -> list[dict[str, Any]] | None:
        path = self.root / f"{side}.{split}.jsonl"
        if not path.is_file():
            return None
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def save_examples(self, side: str, split: str, records: list[dict[str, Any]]) -> None:
        atomic.write_text(self.root / f"{side}.{split}.jsonl",
                          "".join(json.dumps(r) + "\n" for r in records))

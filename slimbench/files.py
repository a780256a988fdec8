"""Reading user-supplied YAML and JSON files: one clear error for a missing or malformed file.

YAML goes through ``yaml.safe_load`` only: no Python objects are ever constructed from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimbench.errors import UsageError


def _text(path: Path, what: str) -> str:
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    return path.read_text(encoding="utf-8")


def read_yaml(path: str | Path, what: str = "file"):
    """The parsed document of ``path`` (None for an empty file)."""
    import yaml

    path = Path(path)
    text = _text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{what} {path}: not valid YAML{at}") from None


def read_json(path: str | Path, what: str = "file"):
    path = Path(path)
    text = _text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} {path} is not valid JSON: {e}") from None

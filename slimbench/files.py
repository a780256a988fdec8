"""Reading user-supplied YAML and JSON files: one clear error for a missing or malformed file.

YAML goes through ``yaml.safe_load`` only: no Python objects are ever constructed from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimbench.errors import UsageError


def _text(path: Path, what: str) -> str:
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; expected a file")
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path} is not a UTF-8 text file (byte {e.start})") from None


def check_output_dir(path: str | Path, what: str) -> None:
    """Refuse, before any work, an output path that cannot be made: one of its parents is a
    file. (Without this, an evaluation would run to the end and fail while writing.)"""
    for parent in [Path(path), *Path(path).parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {path}: {parent} is a file, not a folder")
            return


def _unique_key_loader():
    """A SafeLoader that refuses a key given twice in one mapping. PyYAML keeps the last
    silently: two variants named alike would drop the first without a word."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: PyYAML reports it below
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice (lines {first} and {line})",
                        key_node.start_mark)
                seen[key] = line
            return super().construct_mapping(node, deep)

    return Loader


def read_yaml(path: str | Path, what: str = "file"):
    """The parsed document of ``path`` (None for an empty file).

    Raises:
        UsageError: missing file, invalid YAML, or a key given twice in one mapping.
    """
    import yaml

    path = Path(path)
    text = _text(path, what)
    try:
        return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader
    except yaml.constructor.ConstructorError as e:
        raise UsageError(f"{what} {path}: {e.problem}") from None
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

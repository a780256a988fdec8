"""Reading user-supplied YAML and JSON files: one clear error for a missing or malformed file.

YAML goes through ``yaml.safe_load`` only: no Python objects are ever constructed from it.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from slimbench.errors import UsageError

# What a settings or results file may weigh and how deep it may nest: slimbench's own nest
# under 20 levels and weigh megabytes. Past these, parsing is refused before it exhausts
# memory or the stack (json's parser recurses per level).
MAX_BYTES = 256 << 20
MAX_DEPTH = 100


def _text(path: Path, what: str) -> str:
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; expected a file")
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    if not path.is_file():  # /dev/null, a FIFO, a socket
        raise UsageError(f"{what} {path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise UsageError(f"{what} {path} has {size} bytes; slimbench reads at most {MAX_BYTES}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path} is not a UTF-8 text file (byte {e.start})") from None


def _depth(value) -> int:
    """How deep lists and mappings nest in a parsed value: iterative (no recursion), and each
    container is visited once, so YAML aliases that share or loop back cost nothing more."""
    deepest, stack, seen = 0, [(value, 1)], set()
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list) and id(item) not in seen:
            seen.add(id(item))
            deepest = max(deepest, depth)
            stack += [(v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def check_output_dir(path: str | Path, what: str) -> None:
    """Refuse, before any work, an output path that cannot be made: one of its parents is a
    file, or the nearest existing one cannot be written in (a read-only mount, no
    permission). (Without this, an evaluation would run to the end and fail while writing.)"""
    for parent in [Path(path), *Path(path).parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {path}: {parent} is a file, not a folder")
            # access(2) answers EROFS for a read-only mount even to root
            if not os.access(parent, os.W_OK | os.X_OK):
                readonly = os.statvfs(parent).f_flag & os.ST_RDONLY
                err = errno.EROFS if readonly else errno.EACCES
                raise UsageError(f"{what} {path}: cannot write in {parent}: [Errno {err}] "
                                 f"{os.strerror(err)}")
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
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader
    except RecursionError:
        raise UsageError(f"{what} {path} nests deeper than this reader can follow") from None
    except yaml.constructor.ConstructorError as e:
        raise UsageError(f"{what} {path}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{what} {path}: not valid YAML{at}") from None
    if _depth(data) > MAX_DEPTH:
        raise UsageError(f"{what} {path} nests deeper than {MAX_DEPTH} levels")
    return data


def read_json(path: str | Path, what: str = "file"):
    """The parsed document of ``path``.

    Raises:
        UsageError: missing, not a regular file, too large, nested too deep, or not JSON.
    """
    path = Path(path)
    text = _text(path, what)
    too_deep = UsageError(f"{what} {path} nests deeper than {MAX_DEPTH} levels; not a file "
                          "slimbench writes")
    try:
        data = json.loads(text)
    except RecursionError:
        raise too_deep from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} {path} is not valid JSON: {e}") from None
    if _depth(data) > MAX_DEPTH:
        raise too_deep
    return data

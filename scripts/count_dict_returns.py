"""Functions that hand another module an untyped record (issue 25, "typed data across layers").

Counts the public functions (no leading underscore) of bench/, compress/, tasks/ and reports/
whose return annotation is a bare ``dict``, ``list[dict]``, either ``| None``, or a tuple holding
one. With ``--any``, ``dict[str, Any]`` counts as bare too and serializers named ``to_dict``
are left out: what is still a mapping of free-form keys (user rows, keyword arguments, parsed
YAML, a Hugging Face config). ``-v`` lists them.

    python scripts/count_dict_returns.py [ROOT] [--any] [-v]
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

BARE = re.compile(r"^(dict|list\[dict\])( \| None)?$|^tuple\[.*\bdict\b(?!\[).*\]$")
ANY = re.compile(r"^(list\[)?dict(\[str, Any\])?\]?( \| None)?$|^tuple\[.*\bdict\b.*\]$")


def count(root: Path, loose: bool) -> list[str]:
    pattern = ANY if loose else BARE
    hits = []
    for layer in ("bench", "compress", "tasks", "reports"):
        for path in sorted((root / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) \
                        or node.returns is None or node.name.startswith("_") \
                        or (loose and node.name == "to_dict"):
                    continue
                text = ast.unparse(node.returns)
                if pattern.match(text):
                    hits.append(f"{path.relative_to(root)}:{node.lineno} {node.name} -> {text}")
    return hits


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    hits = count(Path(args[0] if args else "."), "--any" in sys.argv)
    print(len(hits))
    if "-v" in sys.argv:
        print("\n".join(hits))

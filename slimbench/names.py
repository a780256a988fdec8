"""Names that users choose and that end up in file names (variants, tasks)."""

from __future__ import annotations

import re

from slimbench.errors import UsageError

# cells/<variant>--<device>.json: letters, digits and ._- only, no leading dot, so that no
# name can reach outside the run directory, into a subfolder, or hide a file
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name, what: str, source: str) -> str:
    """``name`` if it is a safe file-name component, else one clear error."""
    if not isinstance(name, str):  # YAML reads `1:` as a number, `yes:` as true
        raise UsageError(f"{source}: {what} name {name!r} is not text; quote it in the YAML "
                         f"(\"{name}\")")
    if not SAFE_NAME.fullmatch(name):
        raise UsageError(f"{source}: {what} name {name!r} is not allowed: use 1-64 letters, "
                         "digits, '.', '_' or '-', starting with a letter or digit")
    return name

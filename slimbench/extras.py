"""Optional extras: importing one, or one line that names the extra installing it."""

from __future__ import annotations

import importlib

from slimbench.errors import UsageError


def import_extra(module: str, extra: str, what: str):
    """The module ``module``; a ``UsageError`` naming ``slimbench[extra]`` where it is not
    installed (the command then exits 2 with that one line)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{what} is not installed; pip install 'slimbench[{extra}]'") from None

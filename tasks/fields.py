"""Checks of task-file fields and ``{field}`` templates, and filling a template from a row.

Shared by the task specs (``specs.py``), lm-eval entries (``lmeval_spec.py``), data sources and
the runners, so none of them imports another for a helper.
"""

from __future__ import annotations

import string
from typing import Any

from slimbench.errors import UsageError


def unknown_fields(given: dict[str, Any], allowed: set[str], where: str) -> None:
    """Refuse keys of ``given`` that are not in ``allowed``."""
    extra = sorted(set(given) - allowed)
    if extra:
        raise UsageError(f"{where}: unknown field(s) {', '.join(extra)} "
                         f"(allowed: {', '.join(sorted(allowed))})")


def mapping(value, where: str) -> dict[str, Any]:
    """``value`` if it is a mapping (a task file's section, read from YAML: its keys are
    checked by the caller), else one line naming ``where``."""
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def integer(value, where: str, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def template_names(template: str, where: str) -> list[str]:
    """Row field names a ``str.format`` template reads; a bad template fails naming ``where``."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise UsageError(f"{where}: bad template {template!r}: {e}") from None
    if any(not n.isidentifier() for n in names):
        raise UsageError(f"{where}: template {template!r} may only name row fields, "
                         "like {prompt}")
    return names


def template_fields(template: str) -> list[str]:
    """Row field names a ``str.format`` template reads (``"{a} {b}"`` -> ``['a', 'b']``)."""
    return template_names(template, "template")


def render(template: str, row: dict[str, Any]) -> str:
    """Fill a ``{field}`` template from a row (values are not re-parsed as templates)."""
    try:
        return template.format_map(row)
    except KeyError as e:
        raise UsageError(f"row {row.get('id')!r} has no field {e.args[0]!r}") from None

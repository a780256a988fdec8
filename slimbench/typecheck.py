"""Does a value from YAML or ``--set`` fit a config field's annotation? Checked before the
config is built, so a wrong type gets a message about the parameter rather than about Python
(``'<' not supported between 'int' and 'str'``)."""

from __future__ import annotations

import types
import typing


def misfit(value, hint) -> str | None:
    """What ``value`` should have been to fit the annotation ``hint``; None when it fits or
    when the annotation is of a kind not checked here (the config's __post_init__ still is)."""
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in kinds:  # a bool is an int to isinstance, but `sparsity=true` is a mistake
        fits = (hint is bool if isinstance(value, bool)
                else isinstance(value, (int, float) if hint is float else hint))
        return None if fits else kinds[hint]
    if hint is type(None):
        return None if value is None else "null"
    if origin in (typing.Union, types.UnionType):
        wanted = [misfit(value, a) for a in args]
        if None in wanted:
            return None
        # `X | None` reads as X: the None is the default, not something users write
        return " or ".join(w for w, a in zip(wanted, args, strict=True) if a is not type(None))
    if origin is typing.Literal:
        return None if value in args else "one of " + ", ".join(map(repr, args))
    if origin is tuple and args:
        if not isinstance(value, (list, tuple)):
            return "a list"
        items = args[:1] * len(value) if args[-1] is Ellipsis else args
        if len(items) != len(value):
            return f"a list of {len(args)} items"
        wrong = [w for v, a in zip(value, items, strict=True) if (w := misfit(v, a))]
        return f"a list whose items are each {wrong[0]}" if wrong else None
    return None

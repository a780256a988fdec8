"""Typed JSON documents: dataclasses to plain JSON values and back, checked against their
annotations, and a JSON Schema written from the same annotations.

One definition (the dataclass) gives the writer (``encode``), the checking reader (``decode``,
which names the path of the first value that does not fit) and the documentation
(``json_schema``), so the three cannot drift apart. No dependency: pydantic would do the same
at the cost of a package every install must carry.

Annotations understood: ``str``, ``int``, ``float`` (finite: NaN and the infinities are
refused), ``bool``, ``None``, ``Literal[...]``, ``X | None``, ``list[X]``, ``tuple[X, ...]`` of
fixed length (a JSON array), ``dict[str, X]``, a bare ``dict`` (a free-form JSON object),
``Any``, and dataclasses of these. A dataclass may define ``check(self)`` returning
``(field, expected, got)`` for a rule its types cannot say.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import types
import typing
from typing import Any

from slimbench.errors import UsageError

_MISSING = object()
_SCALARS = {str: ("text", "string"), int: ("an integer", "integer"),
            float: ("a finite number", "number"), bool: ("true or false", "boolean"),
            type(None): ("null", "null")}


class SchemaError(UsageError):
    """A value that does not fit its type: where (``path``), what it must be, what it is."""

    def __init__(self, path: str, want: str, got: object = _MISSING, message: str | None = None):
        self.path, self.want, self.got = path, want, got
        where = path or "the document"
        if message is None:
            message = (f"{where} is missing (it must be {want})" if got is _MISSING
                       else f"{where} must be {want}, got {_show(got)}")
        super().__init__(message)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: str) -> str:
    key = key if key.isidentifier() else repr(key)  # a key may hold a newline: one line stays one
    return f"{path}.{key}" if path else key


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _is_union(origin) -> bool:
    return origin in (typing.Union, types.UnionType)


def describe(hint) -> str:
    """What a value of annotation ``hint`` is, in words ("a number or null")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    if hint in _SCALARS:
        return _SCALARS[hint][0]
    if _is_union(origin):
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is dict or origin is dict:
        return "a mapping"
    if hint is list or origin is list:
        return "a list"
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
    return "any value"


def decode(hint, value, path: str = ""):
    """``value`` (parsed JSON) as annotation ``hint`` says.

    Raises:
        SchemaError: the first value that does not fit, with its path (``a.b[2].c``).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _decode_class(hint, value, path)
    if hint is Any:
        return value
    if _is_union(origin):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {hint}")
        try:
            return decode(inner[0], value, path)
        except SchemaError as e:
            if e.path != path:  # deeper inside: that message is the precise one
                raise
            raise SchemaError(path, describe(hint), value) from None
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise SchemaError(path, describe(hint), value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(path, "a mapping", value)
        return {k: decode(args[1], v, _join(path, k)) for k, v in value.items()} if args \
            else value
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise SchemaError(path, "a list", value)
        return [decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)] if args \
            else value
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise SchemaError(path, describe(hint), value)
        return tuple(decode(a, v, f"{path}[{i}]")
                     for i, (a, v) in enumerate(zip(args, value, strict=True)))
    return _decode_scalar(hint, value, path)


def _decode_scalar(hint, value, path: str):
    if hint not in _SCALARS:
        raise TypeError(f"unsupported annotation {hint!r} at {path}")
    if hint is bool or hint is type(None):
        fits = isinstance(value, hint)
    else:  # a bool is an int to isinstance, but `true` is not a count or a figure
        fits = not isinstance(value, bool) and isinstance(
            value, int | float if hint is float else hint)
    if not fits:
        raise SchemaError(path, describe(hint), value)
    if hint is float and not math.isfinite(value):  # NaN passes every comparison as false
        raise SchemaError(path, describe(hint), value)
    return float(value) if hint is float else value


def _decode_class(cls: type, value, path: str):
    if not isinstance(value, dict):
        raise SchemaError(path, describe(cls), value)
    fields = {f.name: f for f in _fields(cls)}
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise SchemaError(_join(path, str(unknown[0])), "", message=(
            f"{_join(path, str(unknown[0]))} is not a field of {cls.__name__} "
            f"(its fields: {', '.join(fields)})"))
    kwargs = {}
    for name, f in fields.items():
        hint = _hints(cls)[name]
        if name in value:
            kwargs[name] = decode(hint, value[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(_join(path, name), describe(hint))
    obj = cls(**kwargs)
    problem = obj.check() if hasattr(obj, "check") else None
    if problem:
        field, want, got = problem
        raise SchemaError(_join(path, field), want, got)
    return obj


def encode(obj):
    """Plain JSON values of ``obj`` (dataclasses to mappings, tuples to lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [encode(v) for v in obj]
    return obj


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description: the ``Attributes:`` section of the class's Google-style
    docstring, or the field's ``metadata["doc"]`` (fields made from a table elsewhere)."""
    section = (inspect.getdoc(cls) or "").partition("Attributes:")[2]
    docs: dict[str, list[str]] = {}
    name = None
    for line in section.splitlines():
        if line and not line.startswith(" "):
            break  # the next section
        if m := re.match(r"^ {4}(\w+)(?: \([^)]*\))?: ?(.*)$", line):
            name = m.group(1)
            docs[name] = [m.group(2)]
        elif name and line.strip():
            docs[name].append(line.strip())
    out = {k: " ".join(v) for k, v in docs.items()}
    return out | {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)
                  if "doc" in f.metadata}


def json_schema(roots: list[type], **head) -> dict:
    """A JSON Schema (draft 2020-12) accepting any of the dataclasses ``roots``; ``head`` adds
    top-level keys (title, description)."""
    defs: dict[str, dict] = {}

    def of(hint) -> dict:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            if hint.__name__ not in defs:
                defs[hint.__name__] = {}  # placeholder: a type that refers to itself stops here
                defs[hint.__name__] = _object(hint, of)
            return {"$ref": f"#/$defs/{hint.__name__}"}
        if hint in _SCALARS:
            return {"type": _SCALARS[hint][1]}
        if _is_union(origin):
            return {"anyOf": [of(a) for a in args]}
        if origin is typing.Literal:
            return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
        if hint is dict or origin is dict:
            return {"type": "object"} | ({"additionalProperties": of(args[1])} if args else {})
        if hint is list or origin is list:
            return {"type": "array"} | ({"items": of(args[0])} if args else {})
        if origin is tuple:
            return {"type": "array", "prefixItems": [of(a) for a in args], "items": False,
                    "minItems": len(args), "maxItems": len(args)}
        return {}

    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", **head,
           "oneOf": [of(r) for r in roots]}
    return out | {"$defs": dict(sorted(defs.items()))}


def _object(cls: type, of) -> dict:
    docs = field_docs(cls)
    props, required = {}, []
    for f in _fields(cls):
        prop = of(_hints(cls)[f.name])
        if f.name in docs:
            prop = {"description": docs[f.name]} | prop
        if f.default is not dataclasses.MISSING:
            prop["default"] = encode(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            prop["default"] = encode(f.default_factory())
        else:
            required.append(f.name)
        props[f.name] = prop
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    return {"type": "object", "description": summary, "properties": props,
            "required": required, "additionalProperties": False}


class Typed:
    """``to_dict`` / ``from_dict`` for a dataclass of the annotations above."""

    def to_dict(self) -> dict:
        """Plain JSON values (what is written)."""
        return encode(self)

    @classmethod
    def from_dict(cls, data: dict, path: str = ""):
        """The typed value of ``data``.

        Raises:
            SchemaError: the first field that does not fit (path, expected, got).
        """
        return decode(cls, data, path)

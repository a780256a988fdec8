"""One small generic registry: ``@REG.register("name")`` and lookup with "did you mean ...?".

Recipe steps, runtimes, metrics, architecture families and tasks each live in one ``Registry``.
A registry is lazy in two ways, so that listing it (``slimbench ls``) imports nothing heavy:

- an entry can be added by name with a ``"module:attribute"`` path (``add_lazy``), imported on
  its first lookup only;
- a ``loader`` runs once before the first read (the steps' "import every module of
  ``compress/``").

Before its first read every registry also loads the plugins: each entry point of the group
``slimbench.plugins`` (``importlib.metadata``) is imported once, and called if it is a
callable; it registers what it brings by calling the registries (``register_step``,
``METRICS.add``, ``ARCHS.add``, ...), so a package adds a step, a runtime, a metric or a
family without editing slimbench. A plugin that fails is reported once, by name, as a warning;
the rest of slimbench keeps working, and an unknown-name message says which plugin failed.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Generic, TypeVar

from slimbench.errors import UsageError

T = TypeVar("T")
log = logging.getLogger(__name__)
PLUGIN_GROUP = "slimbench.plugins"
_MISSING = object()


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown task 'perplexty'; did you mean 'perplexity'? (known: ...)``: for any set of
    names, registered or not (a config's fields)."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (known: {', '.join(known)})"


class UnknownName(UsageError, KeyError):
    """A name no registry entry has: a ``UsageError`` for the CLI (one line, exit 2) and a
    ``KeyError`` for code that reads a registry as a mapping."""

    def __str__(self) -> str:  # KeyError's own __str__ would quote the message
        return str(self.args[0]) if self.args else ""


class Plugins:
    """The entry points of one group, each loaded once, failures reported by name."""

    def __init__(self, group: str = PLUGIN_GROUP) -> None:
        self.group = group
        self.state = "new"  # new | loading | done
        self.loaded: list[str] = []
        self.failed: dict[str, str] = {}  # entry point name -> one-line reason

    def load(self) -> None:
        """Load every plugin of the group (once; a call while loading returns at once, so a
        plugin may read a registry while it registers)."""
        if self.state != "new":
            return
        from importlib.metadata import entry_points

        self.state = "loading"
        try:
            for ep in entry_points(group=self.group):
                try:
                    obj = ep.load()
                    if callable(obj) and not isinstance(obj, ModuleType):
                        obj()
                    self.loaded.append(ep.name)
                except Exception as e:  # a broken plugin must not take slimbench down
                    self.failed[ep.name] = (f"slimbench plugin {ep.name!r} ({ep.value}) failed "
                                            f"to load: {type(e).__name__}: {e}")
                    log.warning("%s", self.failed[ep.name])
        finally:
            self.state = "done"

    def note(self) -> str:
        """What an unknown-name message adds when a plugin failed (it may have held the name)."""
        return "".join(f"; {msg}" for msg in self.failed.values())


PLUGINS = Plugins()


class Registry(Mapping[str, T], Generic[T]):
    """Named objects of one kind (recipe steps, runtimes, metrics, families, tasks).

    Reads as a mapping (``reg[name]``, ``name in reg``, iteration in name order, ``items``);
    ``get(name)`` without a default and ``reg[name]`` raise ``UnknownName`` (a ``UsageError``
    and a ``KeyError``) with a "did you mean" hint.

    Args:
        kind: what the registry holds, used in error messages ("task", "backend", ...).
        loader: run once before the first read (registers the built-in entries); a failed
            load is retried on the next read.
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str | Callable[[], T]] = {}
        self._help: dict[str, str] = {}
        self._loader = loader
        self._load_state = "new" if loader else "done"  # new | loading | done

    # --- registration (never loads anything: a module registers while being imported) ------
    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, help)
            return obj

        return deco

    def add(self, name: str, obj: T, help: str = "") -> None:
        self._claim(name)
        self._items[name] = obj
        doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()
        self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")

    def add_lazy(self, name: str, target: str | Callable[[], T], help: str = "") -> None:
        """Register ``name`` without importing it: ``target`` is ``"package.module:attr"`` or a
        callable returning the object, resolved on the first lookup of ``name``."""
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: lazy target {target!r} must look like "
                             "'package.module:attribute'")
        self._claim(name)
        self._lazy[name] = target
        self._help[name] = help

    def _claim(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._items or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is registered twice")

    # --- reads ---------------------------------------------------------------------------------
    def _ready(self) -> None:
        """Run the loader and the plugins once (a read from inside either sees what is there)."""
        if self._load_state == "new":
            self._load_state = "loading"
            try:
                self._loader()
                self._load_state = "done"
            finally:
                if self._load_state == "loading":
                    self._load_state = "new"  # failed: retried on the next read
        PLUGINS.load()

    def get(self, name: str, default=_MISSING):
        """The entry ``name``; ``default`` if given and there is none, else ``UnknownName``."""
        self._ready()
        if name in self._items:
            return self._items[name]
        if name in self._lazy:
            return self._resolve(name)
        if default is not _MISSING:
            return default
        raise UnknownName(self.unknown_message(name))

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def _resolve(self, name: str) -> T:
        target = self._lazy[name]
        try:
            if callable(target):
                obj = target()
            else:
                module, _, attr = target.partition(":")
                obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"{self.kind} {name!r} cannot be loaded from {target!r}: "
                             f"{type(e).__name__}: {e}") from e
        del self._lazy[name]
        self._items[name] = obj
        return obj

    def unknown_message(self, name: str) -> str:
        return unknown_name(self.kind, name, self._names()) + PLUGINS.note()

    def describe(self, name: str) -> str:
        self._ready()
        return self._help.get(name, "")

    def _names(self) -> list[str]:
        return sorted({*self._items, *self._lazy})

    def names(self) -> list[str]:
        """Every registered name, sorted, without importing a lazy entry."""
        self._ready()
        return self._names()

    def __contains__(self, name: object) -> bool:
        self._ready()
        return isinstance(name, str) and (name in self._items or name in self._lazy)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    # a registry is one object, not a value: equal to itself only, usable as a key
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self._names()})"

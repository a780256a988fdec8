"""The recipe-step registry: ``Step``, ``STEPS``, the ``@register_step`` decorator, configs.

A step lives in one module, beside its config dataclass and its code::

    @register_step("my_step", MyStepConfig, help="one line for `slimbench ls`")
    def _apply_my_step(parent: LoadedModel, config: MyStepConfig, out: Path) -> StepReport:
        ...  # write the child into `out`; return what it is (``compress/manifest.py``)

The built-in steps are found by importing every module of this package on the first lookup
(``_load_builtin_steps``), so adding a step never means editing a list elsewhere. A step
registered from outside the package (a plugin, a test) uses the same decorator; it is known
from the moment its module is imported.

This module sits below ``loader.py``: ``load_artifact`` looks a load transform up here, and
running a step (``steps.py``, which loads the parent) sits above the loader. Step modules import
``register_step`` from ``steps.py``, which re-exports it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable

from slimbench.compress.kinds import KINDS
from slimbench.errors import UsageError
from slimbench.names import check_name
from slimbench.registry import Registry
from slimbench.typecheck import misfit


@dataclasses.dataclass(frozen=True)
class Step:
    """A recipe step.

    ``accepts``/``produces`` are model kinds (``compress/kinds.py``): a chain is checked
    before any work. ``version`` is part of every cache key of the step's artifacts: bump it
    when a change to the step's code changes what it writes.
    """

    name: str
    config_cls: type
    apply: Callable  # (parent LoadedModel, config, staging dir) -> StepReport
    accepts: tuple[str, ...] = ("torch",)
    produces: str | None = None  # None: the same kind as the input
    transform: Callable | None = None  # (loaded, config, manifest): re-applied at load time
    version: int = 1
    load: Callable | None = None  # (path, config, manifest) -> model, for a non-HF folder
    # libraries beyond cache.LIBRARIES whose version changes what this step writes (an
    # optional engine's converter): in this step's cache keys only, so that installing an
    # extra does not invalidate every other artifact
    libraries: tuple[str, ...] = ()


class StepRegistry(Registry[Step]):
    """The recipe-step registry; every read first makes sure the built-in steps are loaded.

    Registration (``add``) does not load them: the built-in modules register themselves while
    they are being imported, and loading from inside ``add`` would recurse.
    """

    def get(self, name: str) -> Step:
        _load_builtin_steps()
        return super().get(name)

    def describe(self, name: str) -> str:
        _load_builtin_steps()
        return super().describe(name)

    def names(self) -> list[str]:
        _load_builtin_steps()
        return super().names()

    def __contains__(self, name: object) -> bool:
        _load_builtin_steps()
        return super().__contains__(name)


STEPS = StepRegistry("recipe step")
_builtins = {"loaded": False, "loading": False}


def _load_builtin_steps() -> None:
    """Import every module of ``slimbench.compress`` once, so their steps register.

    Importing all of them (not only "step modules") is what spares a central list; the other
    modules are imported by the steps anyway.
    """
    if _builtins["loaded"] or _builtins["loading"]:
        return  # loading: a module being imported looked a step up; it sees what is there
    import slimbench.compress as package

    _builtins["loading"] = True
    try:
        for module in pkgutil.iter_modules(package.__path__):
            if not module.ispkg:
                importlib.import_module(f"{package.__name__}.{module.name}")
        _builtins["loaded"] = True  # only after success: a failed import is retried
    finally:
        _builtins["loading"] = False


def register_step(name: str, config_cls: type, *, accepts: tuple[str, ...] = ("torch",),
                  produces: str | None = None, transform: Callable | None = None,
                  version: int = 1, load: Callable | None = None,
                  libraries: tuple[str, ...] = (),
                  help: str = "") -> Callable[[Callable], Callable]:
    """Register the decorated function as recipe step ``name``.

    Args:
        name: the step's name in recipes, ``--step`` and artifact folder names.
        config_cls: a dataclass of the step's parameters, validated in ``__post_init__``.
        accepts: the model kinds (``compress/kinds.py``) the step takes.
        produces: the kind it writes (None: the kind it was given).
        transform: ``(LoadedModel, config, Manifest) -> LoadedModel`` re-applied by
            ``load_artifact`` for steps whose result is stored as the parent's weights plus a
            recipe; it checks what it rebuilt against what the manifest recorded (raising
            ``ModelLoadError``).
        version: part of the step's cache keys: bump it when its output changes.
        load: ``(path, config, Manifest) -> nn.Module | None`` for steps whose artifact is
            not a Hugging Face folder: ``load_artifact`` calls it (with the step's
            ``load_transform`` recorded) instead of transformers; None from it means the
            folder is of an earlier version of the step, loaded the usual way.
        libraries: distributions whose versions join the step's cache keys (``Step``).
        help: one line for ``slimbench ls`` (default: the function's docstring's first line).

    Returns:
        A decorator for ``apply(parent: LoadedModel, config, out: Path) -> StepReport`` that
        writes the child into ``out`` and reports it (a plugin may return a plain mapping of
        manifest fields instead); the function is unchanged.

    Raises:
        UsageError: a name that cannot be a folder name, a config that is not a dataclass,
            an unknown kind.
        ValueError: a name registered twice.
    """
    check_name(name, "recipe step", "register_step")  # it names artifact folders
    if not dataclasses.is_dataclass(config_cls):
        raise UsageError(f"register_step {name}: config_cls must be a dataclass")
    unknown = sorted(k for k in (*accepts, produces) if k is not None and k not in KINDS)
    if unknown:
        raise UsageError(f"register_step {name}: unknown model kind(s) {', '.join(unknown)} "
                         f"(known: {', '.join(KINDS)})")

    def deco(apply: Callable) -> Callable:
        doc = (apply.__doc__ or "").strip().splitlines()
        step = Step(name, config_cls, apply, tuple(accepts), produces, transform, version,
                    load, tuple(libraries))
        STEPS.add(name, step, help or (doc[0] if doc else ""))
        return apply

    return deco


def make_config(step: Step, params: dict):
    """The step's config from user parameters, with one clear message for a bad one."""
    import typing

    fields = {f.name for f in dataclasses.fields(step.config_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise UsageError(f"step {step.name}: unknown parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(fields)) or '(none)'}")
    # checked before the config is built: its __post_init__ compares values and would fail
    # on a wrong type with a message about Python ('<' not supported between ...)
    try:
        hints = typing.get_type_hints(step.config_cls)
    except Exception:  # an annotation that cannot be resolved: leave it to the dataclass
        hints = {}
    for name, value in params.items():
        wanted = misfit(value, hints[name]) if name in hints else None
        if wanted:
            raise UsageError(f"step {step.name}: {name} must be {wanted}, got {value!r}")
    try:
        return step.config_cls(**params)
    except (TypeError, UsageError) as e:  # every message names the step once
        raise UsageError(f"step {step.name}: {e}") from None

"""Trainers registered by name; `harness list methods` reads this.

A method registers itself: its module decorates its Trainer class with ``@register_trainer``. The
methods are found, in a fixed order, by

* walking the ``trainers`` package: a module with a top-level class decorated ``@register_trainer`` is
  a method module and is imported; the others (losses, objectives, timesteps, rewards ...) are helpers,
  recognised from their source without importing them;
* the entry-point group ``harness.methods``: an installed package adds a method without touching this
  repository, e.g. in its pyproject.toml ``[project.entry-points."harness.methods"] mine = "mypkg.mine"``
  (a module that registers its trainer, or the Trainer class itself).

A method module that fails to import (or to parse) stops the discovery with a `MethodLoadError` naming it:
a broken method never silently disappears from the list.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from functools import cache
from importlib.metadata import entry_points
from importlib.util import find_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainers.base import Trainer

ENTRY_POINT_GROUP = "harness.methods"
TRAINERS: dict[str, type[Trainer]] = {}


class MethodLoadError(RuntimeError):
    """A method module or entry point that cannot be loaded."""


def register_trainer(cls: type[Trainer]) -> type[Trainer]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    if TRAINERS.get(cls.name, cls) is not cls:
        raise ValueError(f"trainer {cls.name!r} registered twice")
    TRAINERS[cls.name] = cls
    return cls


def _registers_trainer(source: str) -> bool:
    """Whether a module's source has a top-level class decorated ``@register_trainer``."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            for dec in node.decorator_list:
                if (isinstance(dec, ast.Name) and dec.id == "register_trainer") or \
                        (isinstance(dec, ast.Attribute) and dec.attr == "register_trainer"):
                    return True
    return False


def builtin_method_modules() -> list[str]:
    """The ``trainers`` package's method modules, sorted by name (none is imported)."""
    import trainers

    found = []
    for info in sorted(pkgutil.iter_modules(trainers.__path__, "trainers."), key=lambda i: i.name):
        if info.ispkg:
            continue
        origin = find_spec(info.name).origin
        try:
            with open(origin, encoding="utf-8") as f:
                registers = _registers_trainer(f.read())
        except (OSError, SyntaxError, ValueError) as exc:
            raise MethodLoadError(f"cannot read trainers module {info.name} ({origin}): {exc}") from exc
        if registers:
            found.append(info.name)
    return found


@cache
def _discover() -> None:
    """Import the built-in method modules, then load the ``harness.methods`` entry points (by name).
    Cached once it succeeds; a failure is raised again at the next call."""
    for module in builtin_method_modules():
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise MethodLoadError(f"method module {module} failed to import: {type(exc).__name__}: {exc}") from exc
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            loaded = ep.load()
        except Exception as exc:
            raise MethodLoadError(f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}) failed to "
                                  f"load: {type(exc).__name__}: {exc}") from exc
        if isinstance(loaded, type):
            register_trainer(loaded)


def get_trainer(name: str) -> type[Trainer]:
    _discover()
    if name not in TRAINERS:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(sorted(TRAINERS))}")
    return TRAINERS[name]


def available_methods() -> list[str]:
    _discover()
    return sorted(TRAINERS)


def ordered_trainers() -> list[type[Trainer]]:
    """Every registered trainer in report order: by each trainer's ``report_rank`` (a baseline before
    the method whose paper compares against it), then by name; the same order whichever module was
    imported first."""
    _discover()
    return sorted(TRAINERS.values(), key=lambda cls: (cls.report_rank, cls.name))


def trainer_for(method: str, settings: dict | None = None) -> type[Trainer]:
    """The trainer of a run's method: a registered name, or a named variant whose settings
    name its trainer (e.g. ``fcrm-offline: {trainer: fcrm, behaviour: none}``)."""
    return get_trainer((settings or {}).get("trainer") or method)

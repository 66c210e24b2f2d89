"""Trainers registered by name; `harness list methods` reads this."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainers.base import Trainer

TRAINERS: dict[str, type[Trainer]] = {}
BUILTIN_MODULES = ("trainers.sft", "trainers.dpo", "trainers.pgdpo", "trainers.apo", "trainers.fcrm",
                   "trainers.shift", "trainers.flow_grpo", "trainers.diffusionnft",
                   "trainers.awm")


def register_trainer(cls: type[Trainer]) -> type[Trainer]:
    if TRAINERS.get(cls.name, cls) is not cls:
        raise ValueError(f"trainer {cls.name!r} registered twice")
    TRAINERS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def get_trainer(name: str) -> type[Trainer]:
    _load_builtin()
    if name not in TRAINERS:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(sorted(TRAINERS))}")
    return TRAINERS[name]


def available_methods() -> list[str]:
    _load_builtin()
    return sorted(TRAINERS)


def trainer_for(method: str, settings: dict | None = None) -> type[Trainer]:
    """The trainer of a run's method: a registered name, or a named variant whose settings
    name its trainer (e.g. ``fcrm-offline: {trainer: fcrm, behaviour: none}``)."""
    return get_trainer((settings or {}).get("trainer") or method)

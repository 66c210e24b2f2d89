"""Names that become path parts (methods, variants, trainers): one safe pattern, checked at the edge.

A method or variant name is a directory of the run (``<run>/<method>/seed<N>/...``), so a
name like ``../x`` or ``/tmp/x`` would write outside the run directory. Every name is
checked against ``NAME_PATTERN`` where it enters (preset load, ``harness run --methods``);
code that builds paths from names can call ``check_name`` again.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
_NAME = re.compile(NAME_PATTERN)


class UnsafeNameError(ValueError):
    """A name that cannot be used as a path part."""


def is_safe_name(value: object) -> bool:
    """True for a string matching ``NAME_PATTERN`` (which also rules out '.', '..', '/' and '\\')."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(kind: str, value: object) -> str:
    """``value`` if it is a safe name; otherwise UnsafeNameError naming ``kind``, the value and the rule."""
    if not is_safe_name(value):
        raise UnsafeNameError(f"{kind} {value!r} is not a safe name: use {NAME_RULE} (pattern {NAME_PATTERN})")
    return value  # type: ignore[return-value]

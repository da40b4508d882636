"""Strict field types for config dataclasses, from their annotations (run before validation).

    check_fields(cfg)   # raises ValueError("TrainConfig.epochs: expected an integer, got 'abc' (str)")

Values from YAML or `key=value` overrides arrive as int / float / bool / str / list / dict.
Each field is checked against its annotation and, where unambiguous, normalised:
  int      an int (not a bool, not a float such as 1.5); a clean integer string ("3") is read
  float    an int or float (stored as float) or a clean number string ("1e-4"); not a bool
  bool     True / False only (so `epochs=true` is no longer read as 1, and `resume=1` is refused)
  str      a string; a YAML scalar that became a number or a bool (`no`, `2:4`) is refused with
           a hint to quote it
  list[X]  a list or tuple of X (a single X is wrapped in a list); dict: a mapping
  A | B    the first member that accepts the value; None where the annotation allows it
Anything else (Any, callables, nested objects) is left to the config's own `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Any

_INT_RE = re.compile(r"^[-+]?\d+$")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_QUOTE_HINT = " (quote it in YAML or on the command line, e.g. key='\"no\"', to pass it as text)"


class _Mismatch(Exception):
    """Internal: the value does not fit the annotation (the message says what was expected)."""


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved annotation} of a dataclass (cached per class).

    Annotations that cannot be resolved (names imported only for type checkers) are not checked.
    """
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError, AttributeError):
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def coerce(value: Any, typ: Any) -> Any:
    """`value` checked (and normalised) against annotation `typ`; raises _Mismatch."""
    if typ is Any or isinstance(typ, typing.TypeVar):
        return value
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        wanted = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except _Mismatch as exc:
                wanted.append(exc.args[0])
        wanted += ["None"] if type(None) in args else []
        raise _Mismatch("expected " + " or ".join(w.removeprefix("expected ") for w in wanted))
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("expected true or false")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT_RE.match(value.strip()):
            return int(value)
        raise _Mismatch("expected an integer")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        raise _Mismatch("expected a number")
    if typ is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("expected a string", _QUOTE_HINT if isinstance(value, (bool, int, float)) else "")
    if origin in (list, tuple) or typ in (list, tuple):
        if origin is tuple or typ is tuple:  # tuple[X, ...]; fixed-length tuples are left alone
            item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        else:
            item = args[0] if args else Any
        if isinstance(value, (str, bool, int, float)) and (origin is list or typ is list):
            value = [value]  # `targets: Linear` means ["Linear"]
        if not isinstance(value, (list, tuple)):
            raise _Mismatch("expected a list")
        out = []
        for i, x in enumerate(value):
            try:
                out.append(coerce(x, item))
            except _Mismatch as exc:
                raise _Mismatch(f"item {i}: {exc.args[0]}, got {_describe(x)}") from None
        return type(value)(out)
    if origin is dict or typ is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch("expected a mapping")
    return value


def check_fields(cfg: Any) -> None:
    """Check every field of dataclass instance `cfg` against its annotation; normalise in place."""
    cls = type(cfg)
    for name, typ in field_types(cls).items():
        value = getattr(cfg, name)
        try:
            new = coerce(value, typ)
        except _Mismatch as exc:
            msg, hint = exc.args[0], (exc.args[1] if len(exc.args) > 1 else "")
            got = "" if msg.startswith("item ") else f", got {_describe(value)}"
            raise ValueError(f"{cls.__name__}.{name}: {msg}{got}{hint}") from None
        if new is not value:
            object.__setattr__(cfg, name, new)


def check_value(where: str, value: Any, typ: Any) -> Any:
    """One value against annotation `typ` (e.g. a recipe's `seed`); ValueError naming `where`."""
    try:
        return coerce(value, typ)
    except _Mismatch as exc:
        hint = exc.args[1] if len(exc.args) > 1 else ""
        raise ValueError(f"{where}: {exc.args[0]}, got {_describe(value)}{hint}") from None

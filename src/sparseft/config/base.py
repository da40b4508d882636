"""Base class for every config: a plain dataclass, validated in `__post_init__`, JSON round trip.

Serialised form (after torchao's `config_to_dict`): {"_type": "MagnitudeMaskConfig",
"_version": 1, "_data": {...fields...}}. Deserialisation only builds classes found in an
allow-list (registered method configs plus the library's own configs), never arbitrary imports.
A config is saved next to every artifact it produced (`save_config(cfg, dir)`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sparseft.config.types import check_fields
from sparseft.utils.io import atomic_write_text

T = TypeVar("T", bound="BaseConfig")

# Library configs that are not registered methods add themselves here via `@known_config`.
_EXTRA_CONFIGS: dict[str, type] = {}


def known_config(cls: type) -> type:
    """Class decorator: allow `cls` to be rebuilt by `config_from_dict` (allow-list entry)."""
    _EXTRA_CONFIGS[cls.__name__] = cls
    return cls


@dataclasses.dataclass
class BaseConfig:
    """Subclass as a dataclass; validate fields in `__post_init__` and raise ValueError."""

    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        check_fields(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Field types are checked (config/types.py) before a subclass's own `__post_init__` runs,
        so its validation never meets 'abc' where it compares an int (one error naming the field)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_checks_types", False):
            def __post_init__(self, *args: Any, _own=own, **kw: Any) -> None:
                check_fields(self)
                _own(self, *args, **kw)

            __post_init__._checks_types = True  # type: ignore[attr-defined]
            __post_init__.__doc__ = own.__doc__
            cls.__post_init__ = __post_init__  # type: ignore[method-assign]

    def to_dict(self) -> dict[str, Any]:
        return {"_type": type(self).__name__, "_version": self.VERSION, "_data": _plain(dataclasses.asdict(self))}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Build from either the wrapped form ({"_type", "_data"}) or a flat dict of fields."""
        if "_data" in data:
            if data.get("_type") not in (None, cls.__name__):
                raise ValueError(f"expected a {cls.__name__} config, got {data.get('_type')!r}")
            data = data["_data"]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} got unknown field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**data)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _plain(value: Any) -> Any:
    """Turn tuples into lists (JSON) and leave everything else as is."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _allowed() -> dict[str, type]:
    from sparseft.registry import REGISTRY  # local: registry is filled as method modules import

    return {**_EXTRA_CONFIGS, **REGISTRY.config_classes()}


def config_from_dict(data: dict[str, Any]) -> BaseConfig:
    """Rebuild any allowed config from its wrapped dict form."""
    name = data.get("_type")
    cls = _allowed().get(name)
    if cls is None:
        raise ValueError(f"unknown or disallowed config type {name!r}; known: {sorted(_allowed())}")
    return cls.from_dict(data)


def save_config(config: BaseConfig, directory: str | Path, filename: str | None = None) -> Path:
    """Write `config` as JSON into `directory` (atomically); returns the file path."""
    path = Path(directory) / (filename or f"{_snake(type(config).__name__)}.json")
    atomic_write_text(path, config.to_json() + "\n")
    return path


def load_config(path: str | Path) -> BaseConfig:
    return config_from_dict(json.loads(Path(path).read_text()))


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def parse_scalar(text: str) -> Any:
    """Parse a command-line value as YAML, but read `1e-4` as a float (YAML 1.1 says string)."""
    import yaml

    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)
    return value


def coerce_field(cls: type, name: str, raw: str) -> Any:
    """Parse a command-line string for dataclass field `name` of `cls` into the field's type."""
    hints = typing.get_type_hints(cls)
    if name not in hints:
        valid = sorted(f.name for f in dataclasses.fields(cls))
        raise ValueError(f"{cls.__name__} has no field {name!r}; valid fields: {valid}")
    return parse_value(raw, hints[name])


def parse_value(raw: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(raw, arg)
            except (ValueError, TypeError):
                continue
        raise ValueError(f"cannot parse {raw!r} as {typ}")
    if typ is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {raw!r}")
    if typ in (int, float, str):
        return typ(raw)
    if origin in (list, tuple):
        return [parse_value(x.strip(), args[0] if args else str) for x in raw.split(",") if x.strip()]
    return raw

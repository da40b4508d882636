"""Explicit registry of methods: one `register_method(...)` call per method, found with one grep.

Every method (a mask selector, a pruner, a quantizer, a pipeline stage ...) is a config dataclass
plus one function. The registry maps (kind, name) -> Method and config class -> Method, so that
verbs such as `prune_(model, cfg)` dispatch on the config's type (as torchao's `quantize_` does)
and recipes can name a method by string.

The tables live in a `Registry` object; the library's default instance is `REGISTRY`. Tests can
build their own `Registry()` instead of mutating the shared one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

# The kinds of method the library knows; a new family of methods adds its kind here.
KINDS = ("mask", "prune", "quantize", "factorize", "experts", "attention", "stage", "task")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-:]*$")


@dataclass(frozen=True)
class Method:
    """A registered method: its kind, name, config class and the function that applies it."""

    kind: str
    name: str
    config_cls: type
    apply_fn: Callable[..., Any]
    description: str = ""


class Registry:
    """Name and config-type lookup tables, validated on registration."""

    def __init__(self) -> None:
        self._by_name: dict[tuple[str, str], Method] = {}
        self._by_config: dict[type, Method] = {}

    def register(self, *, kind: str, name: str, config_cls: type, apply_fn: Callable[..., Any],
                 description: str = "") -> Method:
        if kind not in KINDS:
            raise ValueError(f"unknown method kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        if not _NAME_RE.match(name):
            raise ValueError(f"method name {name!r} must be lowercase letters, digits, '_', '-' or ':'")
        if (kind, name) in self._by_name:
            raise ValueError(f"{kind} method {name!r} is already registered")
        if config_cls in self._by_config:
            other = self._by_config[config_cls]
            raise ValueError(f"{config_cls.__name__} is already registered as {other.kind}:{other.name}")
        method = Method(kind, name, config_cls, apply_fn, description)
        self._by_name[(kind, name)] = method
        self._by_config[config_cls] = method
        return method

    def get(self, kind: str, name: str) -> Method:
        try:
            return self._by_name[(kind, name)]
        except KeyError:
            valid = ", ".join(self.names(kind)) or "(none registered)"
            raise ValueError(f"unknown {kind} method {name!r}; valid choices: {valid}") from None

    def for_config(self, config: Any) -> Method:
        method = self._by_config.get(type(config))
        if method is None:
            raise TypeError(f"no method is registered for config type {type(config).__name__}")
        return method

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self._by_name if k == kind)

    def methods(self, kind: str | None = None) -> list[Method]:
        return [m for (k, _), m in sorted(self._by_name.items()) if kind is None or k == kind]

    def config_classes(self) -> dict[str, type]:
        """Allow-list used when deserialising configs: class name -> class."""
        return {cls.__name__: cls for cls in self._by_config}


REGISTRY = Registry()


def register_method(*, kind: str, name: str, config_cls: type, apply_fn: Callable[..., Any],
                    description: str = "") -> Method:
    """Register a method in the library's default registry (called once, at module import)."""
    return REGISTRY.register(kind=kind, name=name, config_cls=config_cls, apply_fn=apply_fn,
                             description=description)


def get_method(kind: str, name: str) -> Method:
    return REGISTRY.get(kind, name)

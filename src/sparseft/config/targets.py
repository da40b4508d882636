"""Choosing which modules a method touches, one way everywhere: `targets` + `ignore`.

Each pattern is one of
  * a module class name, e.g. "Linear" or "Embedding";
  * "re:<regex>", searched in the module's fully qualified name (fqn), e.g. "re:attention\\.self";
  * a plain name, matching the fqn exactly or its last dotted parts, e.g. "query" or "classifier".
A module is selected when it matches any target and no ignore pattern. `filter_fn(module, fqn)`
is an escape hatch for rules patterns cannot express. A target that selects nothing is an error
(never a silent skip).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch.nn as nn


@dataclass
class TargetSpec:
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if isinstance(self.ignore, str):
            self.ignore = [self.ignore]
        if not self.targets:
            raise ValueError("targets must name at least one module type or pattern")
        for pattern in [*self.targets, *self.ignore]:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"invalid regex in pattern {pattern!r}: {exc}") from None


def matches(pattern: str, fqn: str, module: nn.Module) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], fqn) is not None
    if type(module).__name__ == pattern:
        return True
    return fqn == pattern or fqn.endswith("." + pattern)


def select_modules(model: nn.Module, spec: TargetSpec, *,
                   filter_fn: Callable[[nn.Module, str], bool] | None = None,
                   require_match: bool = True) -> list[tuple[str, nn.Module]]:
    """Return [(fqn, module)] selected by `spec`, in model order."""
    chosen: list[tuple[str, nn.Module]] = []
    for fqn, module in model.named_modules():
        if not fqn:
            continue
        if not any(matches(p, fqn, module) for p in spec.targets):
            continue
        if any(matches(p, fqn, module) for p in spec.ignore):
            continue
        if filter_fn is not None and not filter_fn(module, fqn):
            continue
        chosen.append((fqn, module))
    if require_match and not chosen:
        raise ValueError(f"targets {spec.targets} (ignore {spec.ignore}) select no module of "
                         f"{type(model).__name__}")
    return chosen


def select_parameters(model: nn.Module, spec: TargetSpec, *, param_names: Iterable[str] = ("weight",),
                      filter_fn: Callable[[nn.Module, str], bool] | None = None,
                      ) -> list[tuple[str, nn.Parameter]]:
    """Return [(param fqn, parameter)] for the named parameters of the selected modules.

    Tied parameters (the same tensor under two names) are returned once, under the first name.
    """
    seen: set[int] = set()
    out: list[tuple[str, nn.Parameter]] = []
    for fqn, module in select_modules(model, spec, filter_fn=filter_fn):
        for name in param_names:
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter) and id(param) not in seen:
                seen.add(id(param))
                out.append((f"{fqn}.{name}", param))
    return out

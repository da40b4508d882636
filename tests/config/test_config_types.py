"""Config field types from the annotations (config/types.py): wrong types are one error naming
the field, before the config's own validation; clean values are normalised."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from sparseft.config.base import BaseConfig

if TYPE_CHECKING:
    from collections import OrderedDict  # only for the annotation of Unresolved.x


@dataclass
class Toy(BaseConfig):
    n: int = 1
    rate: float = 0.5
    flag: bool = False
    name: str = "x"
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    limit: int | None = None
    every: str | int = "epoch"
    extra: dict = field(default_factory=dict)
    anything: Any = None

    def __post_init__(self) -> None:
        if self.n < 1:  # would be "'<' not supported" for n='abc' without the type check
            raise ValueError("n must be >= 1")


@dataclass
class Child(Toy):
    pass


@dataclass
class Unresolved(BaseConfig):
    x: OrderedDict | None = None


@pytest.mark.parametrize("kw, message", [
    ({"n": "abc"}, "Toy.n: expected an integer, got 'abc' (str)"),
    ({"n": True}, "Toy.n: expected an integer, got True (bool)"),
    ({"n": 1.5}, "Toy.n: expected an integer, got 1.5 (float)"),
    ({"rate": "fast"}, "Toy.rate: expected a number, got 'fast'"),
    ({"rate": True}, "Toy.rate: expected a number, got True"),
    ({"flag": 1}, "Toy.flag: expected true or false, got 1 (int)"),
    ({"name": 124}, "Toy.name: expected a string, got 124 (int) (quote it"),
    ({"targets": ["Linear", 3]}, "Toy.targets: item 1: expected a string, got 3 (int)"),
    ({"limit": "many"}, "Toy.limit: expected an integer or None, got 'many'"),
    ({"every": 2.5}, "Toy.every: expected a string or an integer, got 2.5"),
    ({"extra": [1]}, "Toy.extra: expected a mapping"),
])
def test_wrong_types_name_the_field(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Toy(**kw)
    with pytest.raises(ValueError, match=r"^Child\."):
        Child(**kw)  # inherited __post_init__: checked, and named after the subclass
    with pytest.raises(ValueError):
        Toy.from_dict(kw)


def test_clean_values_are_normalised():
    cfg = Toy(n="3", rate=1, targets="Linear", limit="7", every=5, anything=object())
    assert (cfg.n, cfg.rate, cfg.targets, cfg.limit, cfg.every) == (3, 1.0, ["Linear"], 7, 5)
    assert isinstance(cfg.rate, float)
    assert Toy(rate="1e-4").rate == 1e-4 and Toy(limit=None).limit is None


def test_own_validation_still_runs_and_unresolved_annotations_are_skipped():
    with pytest.raises(ValueError, match="n must be >= 1"):
        Toy(n=0)
    assert Unresolved(x=123).x == 123

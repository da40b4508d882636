"""Recipes: an ordered list of YAML stages run by `sparseft run recipe.yaml key=value ...`.

    # sparseft run recipes/minilm_conll_full.yaml
    model: minilm                      # alias, folder, .gguf or hub id
    data: {task: ner, train: eng.train, eval: eng.testa}
    output_dir: runs/conll_full
    seed: 42
    stages:
      - {name: finetune, method: train, epochs: 3, lr: 5.0e-5}
      - {name: dev, method: eval}
      - {name: save, method: save}

Each stage is `{name, method, ...fields of that method's config}`; `method` is a registered
stage name (see `sparseft.registry`). Overrides use dotted keys on the raw YAML before
validation: `seed=1`, `data.train_limit=2000`, `stages.finetune.lr=1e-4` (by stage name) or
`stages.0.lr=1e-4` (by index). Values are parsed as YAML scalars (`1e-4`, `true`, `[a, b]`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from sparseft.config.base import parse_scalar
from sparseft.config.types import check_value
from sparseft.load.data import DataConfig


@dataclass
class Stage:
    name: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    model: str
    data: DataConfig
    stages: list[Stage]
    output_dir: str = "runs/run"
    seed: int = 42
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Recipe":
        raw = copy.deepcopy(raw)
        allowed = {"model", "data", "stages", "output_dir", "seed"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"unknown recipe key(s) {unknown}; valid keys: {sorted(allowed)}")
        if not raw.get("model"):
            raise ValueError("recipe needs `model:` (an alias such as minilm, a folder or a hub id)")
        if not isinstance(raw.get("stages"), list) or not raw["stages"]:
            raise ValueError("recipe needs a non-empty `stages:` list")
        stages, names = [], set()
        for i, s in enumerate(raw["stages"]):
            if not isinstance(s, dict) or "method" not in s:
                raise ValueError(f"stage {i} must be a mapping with at least `method:`; got {s!r}")
            s = dict(s)
            method = s.pop("method")
            name = s.pop("name", method)
            if name in names:
                raise ValueError(f"two stages are named {name!r}; give each a unique `name:`")
            names.add(name)
            stages.append(Stage(name, method, s))
        data = DataConfig.from_dict(raw.get("data") or {})
        return cls(model=check_value("recipe model", raw["model"], str), data=data, stages=stages,
                   output_dir=check_value("recipe output_dir", raw.get("output_dir", "runs/run"), str),
                   seed=check_value("recipe seed", raw.get("seed", 42), int), raw=raw)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    return Recipe.from_dict(apply_overrides(raw, overrides))


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict (stage lists addressed by name or index)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. stages.finetune.lr=1e-4)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: i + 1]), create=True)
        last = parts[-1]
        parsed = parse_scalar(value)
        if isinstance(node, list):
            node = _child(node, last, key, create=False)
            raise ValueError(f"override {item!r} would replace a whole stage; set one of its fields")
        node[last] = parsed
    return raw


def _child(node: Any, part: str, path: str, *, create: bool) -> Any:
    if isinstance(node, list):
        if part.isdigit() and int(part) < len(node):
            return node[int(part)]
        for entry in node:
            if isinstance(entry, dict) and entry.get("name", entry.get("method")) == part:
                return entry
        names = [e.get("name", e.get("method")) for e in node if isinstance(e, dict)]
        raise ValueError(f"override path {path!r}: no stage {part!r}; stages are {names}")
    if not isinstance(node, dict):
        raise ValueError(f"override path {path!r} goes through a non-mapping value")
    if part not in node:
        if not create:
            raise ValueError(f"override path {path!r} does not exist")
        node[part] = {}
    return node[part]

"""Import every module that registers a method, so the registry is complete.

This is the one place to look for what exists: each imported module calls `register_method(...)`
at import time for the methods it defines (grep for `register_method(` to list them all).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import sparseft.eval.stage  # noqa: F401  stage: eval
import sparseft.export.stage  # noqa: F401  stage: save
import sparseft.train.stage  # noqa: F401  stage: train
from sparseft.registry import REGISTRY, Method


def build_stage_config(stage, recipe) -> tuple[Method, Any]:
    """Look up a recipe stage's method and build its validated config from the stage fields."""
    method = REGISTRY.get("stage", stage.method)
    params = dict(stage.params)
    fields = {f.name for f in dataclasses.fields(method.config_cls)}
    # Run-wide defaults: each stage writes under <run dir>/<stage name> and uses the run's seed.
    if "output_dir" in fields:
        params.setdefault("output_dir", str(Path(recipe.output_dir) / stage.name))
    if "seed" in fields:
        params.setdefault("seed", recipe.seed)
    try:
        return method, method.config_cls.from_dict(params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"stage {stage.name!r} ({stage.method}): {exc}") from None

"""Import every module that registers a method, so the registry is complete.

This is the one place to look for what exists: each imported module calls `register_method(...)`
at import time for the methods it defines (grep for `register_method(` to list them all).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import sparseft.attention.apply  # noqa: F401  attention: sparse
import sparseft.attention.stage  # noqa: F401  stage: sparse_attention
import sparseft.chat.data  # noqa: F401  stage: chat_data
import sparseft.chat.stage  # noqa: F401  stages: chat_sft, chat_eval
import sparseft.compress.factorize.methods  # noqa: F401  factorize: svd, asvd, whiten_svd, fisher_svd
import sparseft.compress.factorize.stage  # noqa: F401  stages: factorize, factorize_finetune
import sparseft.compress.prune.magnitude  # noqa: F401  prune: magnitude
import sparseft.compress.prune.movement  # noqa: F401  prune: movement
import sparseft.compress.prune.nm  # noqa: F401  prune: nm
import sparseft.compress.prune.random  # noqa: F401  prune: random
import sparseft.compress.prune.sparsegpt  # noqa: F401  prune: sparsegpt
import sparseft.compress.prune.stage  # noqa: F401  stages: prune, prune_finetune
import sparseft.compress.prune.structured  # noqa: F401  prune: structured
import sparseft.compress.prune.wanda  # noqa: F401  prune: wanda
import sparseft.compress.quantize.dynamic  # noqa: F401  quantize: dynamic_int8
import sparseft.compress.quantize.gptq  # noqa: F401  quantize: gptq
import sparseft.compress.quantize.half  # noqa: F401  quantize: half
import sparseft.compress.quantize.kmeans  # noqa: F401  quantize: kmeans
import sparseft.compress.quantize.nf4  # noqa: F401  quantize: nf4
import sparseft.compress.quantize.rtn  # noqa: F401  quantize: rtn
import sparseft.compress.quantize.static  # noqa: F401  quantize: static_int8
import sparseft.compress.quantize.stage  # noqa: F401  stage: quantize
import sparseft.eval.stage  # noqa: F401  stage: eval
import sparseft.experts.moefy  # noqa: F401  experts: moefy
import sparseft.experts.stage  # noqa: F401  stage: moefy
import sparseft.experts.task_stage  # noqa: F401  stages: task_experts, esft
import sparseft.experts.upcycle  # noqa: F401  experts: upcycle
import sparseft.export.compressed_stage  # noqa: F401  stage: export
import sparseft.export.stage  # noqa: F401  stage: save
import sparseft.sft.stage  # noqa: F401  stage: sft (and, through masks.select, every mask method)
import sparseft.train.lora_stage  # noqa: F401  stage: lora
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

"""`moefy_(model, config, *, batches=None)`: the expert verb, dispatched on the config type.

    moefy_(model, MoEfyConfig(num_experts=16, top_k=4))                      # MoEfication
    moefy_(model, MoEfyConfig(num_experts=16, top_k=4, router="mlp"), batches=calib)
    moefy_(model, UpcycleConfig(num_experts=4, top_k=2))                     # sparse upcycling (= upcycle_)

Each expert method registers (kind "experts") a config and `apply(model, config, *, batches)`.
After it ran, the model records what it now is, so `save_pretrained` writes a folder that
`sparseft.load` (and `from_pretrained` after `import sparseft`) rebuilds with the same outputs:
  * `config.quantization_config` (utils/swaps.py): every `ExpertFFN` (its layout: E, expert
    size, gating, activation, routing, router kind) and BERT's `output.dense` pass-throughs;
  * `config.sparseft_experts` {"format_version", "method", "config", "methods", "layers": {fqn:
    {"num_experts", "expert_size", "top_k", "threshold", "combine", "router"}}} for people and
    reports (the `neurons` buffer in the weights says which dense neuron each expert row is).
Plain transformers refuses the folder (the empty guard under `output.dense.weight` / the block's
`weight` does not fit), instead of loading random FFN weights.
"""

from __future__ import annotations

from typing import Iterable

import torch.nn as nn

from sparseft.experts.config import UpcycleConfig
from sparseft.experts.layer import expert_layers
from sparseft.registry import REGISTRY
from sparseft.utils.swaps import record_swaps_

KEY = "sparseft_experts"
FORMAT_VERSION = 1


def needs_batches(config) -> bool:
    fn = getattr(config, "needs_batches", None)
    return bool(fn()) if callable(fn) else False


def moefy_(model: nn.Module, config, *, batches: Iterable[dict] | None = None) -> dict:
    """Turn `model`'s FFN blocks into experts in place, with the method registered for `type(config)`.

    Args:
        model: a transformers model with BERT-style or SwiGLU FFN blocks.
        config: MoEfyConfig or UpcycleConfig (any registered "experts" config).
        batches: calibration batches (dicts with input_ids / attention_mask), needed for
            clustering='coactivation' and router='mlp' (see `needs_batches`).

    Returns the method's summary (blocks, experts, router training losses ...).

    Example:
        >>> moefy_(model, MoEfyConfig(num_experts=8, top_k=2))     # doctest: +SKIP
    """
    method = REGISTRY.for_config(config)
    if method.kind != "experts":
        raise TypeError(f"{type(config).__name__} configures a {method.kind} method, not an experts method")
    batches = list(batches) if batches is not None else None
    if needs_batches(config) and not batches:
        raise ValueError(f"experts method {method.name!r} with this config needs calibration batches (batches=[...]); "
                         f"in a recipe set calib_samples > 0 and give training data")
    summary = method.apply_fn(model, config, batches=batches)
    record_experts_(model, method.name, config)
    return summary


def upcycle_(model: nn.Module, config: UpcycleConfig) -> dict:
    """Sparse upcycling in place (`moefy_` with an UpcycleConfig): E copies of each FFN + a top-k router.

    Example:
        >>> upcycle_(model, UpcycleConfig(num_experts=4, top_k=2))     # doctest: +SKIP
    """
    if not isinstance(config, UpcycleConfig):
        raise TypeError(f"upcycle_ takes an UpcycleConfig, got {type(config).__name__}")
    return moefy_(model, config)


def record_experts_(model: nn.Module, method: str, config) -> None:
    """Write the expert layout into `model.config` (see module docstring)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    record_swaps_(model)
    previous = getattr(cfg, KEY, None) or {}
    layers = {n: {"num_experts": m.num_experts, "expert_size": m.expert_size, "top_k": m.top_k,
                  "threshold": m.threshold, "combine": m.combine,
                  "router": "oracle" if m.router is None else m.router.spec()["kind"]}
              for n, m in expert_layers(model)}
    methods = [*previous.get("methods", []), {"method": method, "config": config.to_dict()}]
    setattr(cfg, KEY, {"format_version": FORMAT_VERSION, "method": method, "config": config.to_dict(),
                       "methods": methods, "layers": layers})


def set_routing_(model: nn.Module, *, top_k: int | None = None, threshold: float | None = None,
                 oracle: bool | None = None) -> int:
    """Change how every ExpertFFN routes (k, mass threshold, oracle vs learned router); returns the count."""
    layers = expert_layers(model)
    for _, layer in layers:
        if top_k is not None:
            if not 1 <= top_k <= layer.num_experts:
                raise ValueError(f"top_k must be in [1, {layer.num_experts}], got {top_k}")
            layer.top_k = top_k
        if threshold is not None:
            if not 0 <= threshold <= 1:
                raise ValueError(f"threshold must be in [0, 1], got {threshold}")
            layer.threshold = threshold
        if oracle is not None:
            if not oracle and layer.router is None:
                raise ValueError("oracle=False needs a learned router (moefy with router='mlp')")
            layer.oracle = oracle
    cfg = getattr(model, "config", None)
    entry = getattr(cfg, KEY, None) if cfg is not None else None
    if entry:                     # keep config.json in step: a saved folder routes as the model does
        record_swaps_(model)
        for n, m in layers:
            entry["layers"].setdefault(n, {}).update(top_k=m.top_k, threshold=m.threshold)
    return len(layers)

"""`quantize_(model, config, *, batches=None)`: the one quantization verb, dispatched on the config.

Each method module registers (kind "quantize") a config dataclass and an apply function
`apply(model, config, *, batches)`; `quantize_` finds the method from the config's type, so a new
method needs no change here (torchao's `quantize_` pattern, the same as `prune_`).

    >>> quantize_(model, RTNConfig(bits=4, granularity="group", group_size=128))      # doctest: +SKIP
    >>> quantize_(model, DynamicInt8Config())                                          # doctest: +SKIP
    >>> quantize_(model, GPTQConfig(bits=4), batches=calibration_batches)              # doctest: +SKIP

`batches` are calibration batches, dicts of tensors as `PadCollator` makes them (input_ids,
attention_mask). GPTQ and activation-weighted k-means need them; the other methods ignore them.
Quantization is a module swap for inference and export: the swapped layers are not trainable.
"""

from __future__ import annotations

from typing import Iterable

import torch

from sparseft.registry import REGISTRY
from sparseft.utils.swaps import record_swaps_


def needs_batches(config) -> bool:
    """Whether the method configured by `config` needs calibration batches."""
    fn = getattr(config, "needs_batches", None)
    return bool(fn()) if callable(fn) else False


def quantize_(model: torch.nn.Module, config, *, batches: Iterable[dict] | None = None) -> None:
    """Quantize `model` in place with the method registered for `type(config)`.

    Args:
        model: a transformers model (its targeted nn.Linear layers are replaced).
        config: RTNConfig, NF4Config, KMeansConfig, DynamicInt8Config, GPTQConfig, ...
        batches: calibration batches, required when `needs_batches(config)`.

    Example:
        >>> quantize_(model, RTNConfig(bits=8))                                      # doctest: +SKIP
        >>> quantize_(model, GPTQConfig(bits=4), batches=calibration_batches)        # doctest: +SKIP
    """
    method = REGISTRY.for_config(config)
    if method.kind != "quantize":
        raise TypeError(f"{type(config).__name__} configures a {method.kind} method, not a quantization method")
    batches = list(batches) if batches is not None else None
    if needs_batches(config) and not batches:
        raise ValueError(f"quantization method {method.name!r} needs calibration batches (batches=[...]); "
                         f"in a recipe give training data and calib_samples > 0")
    was_training = model.training
    model.eval()
    try:
        method.apply_fn(model, config, batches=batches)
    finally:
        model.train(was_training)
        record_swaps_(model)  # config.json then says how to rebuild the quantized layers

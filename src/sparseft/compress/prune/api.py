"""`prune_(model, config, *, batches=None)`: the one pruning verb, dispatched on the config type.

Each pruning method registers (kind "prune") a config dataclass and an apply function
`apply(model, config, *, batches)`; `prune_` looks the method up from the config's type, so a
new method needs no change here (torchao's `quantize_` pattern).

    >>> prune_(model, MagnitudePruneConfig(sparsity=0.5))                  # doctest: +SKIP
    >>> prune_(model, WandaConfig(sparsity=0.5, pattern="2:4"), batches=calib)  # doctest: +SKIP

`batches` are calibration batches: dicts of tensors as a `PadCollator` makes them
(input_ids, attention_mask, optionally labels). Methods that score from data (wanda, sparsegpt,
movement, structured with importance="activation") require them; the others ignore them.
"""

from __future__ import annotations

from typing import Iterable

import torch

from sparseft.registry import REGISTRY


def needs_batches(config) -> bool:
    """Whether the method configured by `config` needs calibration batches."""
    fn = getattr(config, "needs_batches", None)
    return bool(fn()) if callable(fn) else False


def prune_(model: torch.nn.Module, config, *, batches: Iterable[dict] | None = None) -> None:
    """Prune `model` in place with the method registered for `type(config)`.

    Args:
        model: a transformers model (or any module whose targeted weights are 2-D Linear weights).
        config: a registered pruning config (MagnitudePruneConfig, WandaConfig, StructuredPruneConfig ...).
        batches: calibration batches, required by data-driven methods (see `needs_batches`).

    Example:
        >>> prune_(model, MagnitudePruneConfig(sparsity=0.5))                        # doctest: +SKIP
        >>> prune_(model, WandaConfig(sparsity=0.5, pattern="2:4"), batches=calib)   # doctest: +SKIP
    """
    method = REGISTRY.for_config(config)
    if method.kind != "prune":
        raise TypeError(f"{type(config).__name__} configures a {method.kind} method, not a pruning method")
    batches = list(batches) if batches is not None else None
    if needs_batches(config) and not batches:
        raise ValueError(f"pruning method {method.name!r} needs calibration batches (batches=[...]); "
                         f"in a recipe set calib_samples > 0 and give training data")
    method.apply_fn(model, config, batches=batches)

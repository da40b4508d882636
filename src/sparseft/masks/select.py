"""`select_masks(model, cfg)`: the one entry point to every mask-selection method.

Every method is a score function registered with kind "mask":

    scores = method.apply_fn(model, params, cfg, batches=..., loss_fn=...)   # {fqn: tensor}

and this module does the rest the same way for all of them: find the targeted weights
(`cfg.targets` / `cfg.ignore`), turn the budget into k (`density`, `count` or
`match_lora_rank`), and keep the k highest scores (`topk_masks`, exact count, ties broken by
index). Selection never changes the model's weights (lottery rewinds what it trained).

Example:
    >>> from sparseft.masks.magnitude import MagnitudeMaskConfig
    >>> masks = select_masks(model, MagnitudeMaskConfig(density=0.01))   # doctest: +SKIP
    >>> mask_stats(masks)["selected"]                                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

# Importing the method modules registers them (kind "mask"); keep this list in sync with the files.
import sparseft.masks.fisher  # noqa: F401
import sparseft.masks.lottery  # noqa: F401
import sparseft.masks.magnitude  # noqa: F401
import sparseft.masks.random  # noqa: F401
import sparseft.masks.regrow  # noqa: F401
import sparseft.masks.snr  # noqa: F401
import sparseft.masks.spiel  # noqa: F401
from sparseft.config.targets import select_parameters
from sparseft.masks.config import MaskConfig
from sparseft.masks.mask import Masks, budget_count, topk_masks
from sparseft.registry import REGISTRY
from sparseft.train.loop import default_loss

LossFn = Callable[[nn.Module, dict], torch.Tensor]


def mask_config(name: str, **fields) -> MaskConfig:
    """Build the registered mask config called `name` (e.g. "fisher") from its fields."""
    method = REGISTRY.get("mask", name)
    return method.config_cls.from_dict(fields)


def target_parameters(model: nn.Module, cfg: MaskConfig) -> dict[str, nn.Parameter]:
    """{param fqn: parameter} of the targeted weights, in model order (tied weights once)."""
    params = dict(select_parameters(model, cfg.target_spec))
    bad = [n for n, p in params.items() if p.ndim < 2]
    if bad:
        raise ValueError(f"targets select 1-D weights {bad[:3]}: sparse fine-tuning targets matrices "
                         f"(Linear, Embedding, Conv1D); narrow `targets` or add them to `ignore`")
    return params


def lora_count(shape: torch.Size | tuple[int, ...], rank: int) -> int:
    """Parameters of a rank-`rank` LoRA on a weight of `shape` [out, in, ...]: r*(in+out), capped."""
    out_f = shape[0]
    in_f = int(torch.Size(shape[1:]).numel())
    return min(rank * (in_f + out_f), out_f * in_f)


def budget_quotas(params: dict[str, nn.Parameter], cfg: MaskConfig) -> int | dict[str, int]:
    """Total k (global / proportional per_tensor) or explicit per-tensor quotas (LoRA per_tensor)."""
    total = sum(p.numel() for p in params.values())
    if cfg.match_lora_rank is not None:
        quotas = {n: lora_count(p.shape, cfg.match_lora_rank) for n, p in params.items()}
        return quotas if cfg.allocation == "per_tensor" else sum(quotas.values())
    return budget_count(total, density=cfg.density, count=cfg.count)


def masks_from_scores(scores: dict[str, torch.Tensor], budget: int | dict[str, int],
                      allocation: str) -> Masks:
    """Top-k masks for a total budget, or per-tensor top-k_i for explicit quotas."""
    if isinstance(budget, int):
        return topk_masks(scores, budget, allocation=allocation)
    out = {}
    for name, score in scores.items():
        quota = budget[name]
        out[name] = (topk_masks({name: score}, quota)[name] if quota > 0
                     else torch.zeros_like(score, dtype=torch.bool))
    return out


def select_masks(model: nn.Module, cfg: MaskConfig, *, batches: Iterable[dict] | None = None,
                 loss_fn: LossFn | None = None) -> Masks:
    """Select which entries of the targeted weights a sparse fine-tuning trains.

    Args:
        model: the model (its weights are left as they were).
        cfg: a registered mask config (RandomMaskConfig, MagnitudeMaskConfig, FisherMaskConfig,
            LotteryMaskConfig, RegrowMaskConfig, SpielAGMaskConfig, SpielMAMaskConfig, SNRMaskConfig).
        batches: collated training batches; needed by fisher, lottery and regrow (with a data
            init). `cfg.batches_needed()` says how many are used.
        loss_fn: (model, batch) -> scalar loss; default `model(**batch).loss`.

    Returns:
        {param fqn: bool tensor of the parameter's shape}, exactly the budget's count of True.

    Example:
        >>> masks = select_masks(model, MagnitudeMaskConfig(density=0.01))           # doctest: +SKIP
        >>> masks = select_masks(model, FisherMaskConfig(n_batches=8), batches=batches)  # doctest: +SKIP
    """
    method = REGISTRY.for_config(cfg)
    if method.kind != "mask":
        raise TypeError(f"{type(cfg).__name__} is a {method.kind} config, not a mask config")
    if cfg.batches_needed() and batches is None:
        raise ValueError(f"mask method {method.name!r} needs training batches (batches=...)")
    params = target_parameters(model, cfg)
    budget = budget_quotas(params, cfg)
    scores = method.apply_fn(model, params, cfg, batches=batches, loss_fn=loss_fn or default_loss)
    missing = sorted(set(params) - set(scores))
    assert not missing, f"{method.name} returned no scores for {missing[:3]}"
    return masks_from_scores({n: scores[n] for n in params}, budget, cfg.allocation)


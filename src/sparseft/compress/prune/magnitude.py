"""Unstructured magnitude pruning: zero the weights with the smallest |W| (L1 magnitude).

    prune_(model, MagnitudePruneConfig(sparsity=0.5, allocation="global"))

`allocation` picks the comparison group: "global" (one threshold for all targeted matrices,
the classic Han et al. / Zhu & Gupta setting), "per_tensor" (equal sparsity per matrix) or
"per_row" (equal sparsity per output row, the magnitude baseline of the Wanda paper). No data
is needed. Gradual pruning during fine-tuning reuses `magnitude_scores` (see schedule.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparseft.compress.prune.common import (apply_masks_, check_allocation, check_sparsity, check_targets,
                                            default_ignore, default_targets, prunable_weights, select_masks)
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method


@dataclass
class MagnitudePruneConfig(BaseConfig):
    """Args:
        sparsity: fraction of the targeted weights set to zero, in [0, 1).
        allocation: 'global', 'per_tensor' or 'per_row' (see module docstring).
        targets / ignore: which modules' weights are pruned (sparseft.config.targets patterns).
    """

    sparsity: float = 0.5
    allocation: str = "global"
    targets: list[str] = field(default_factory=default_targets)
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        check_allocation(self.allocation)
        check_targets(self)


def magnitude_scores(params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """|W| per entry (float32 copies, [out, in] each)."""
    return {name: p.detach().abs().float() for name, p in params}


@torch.no_grad()
def prune_magnitude_(model: torch.nn.Module, config: MagnitudePruneConfig, *, batches=None) -> None:
    """Zero round(sparsity * n) smallest-|W| entries per allocation group (in place)."""
    params = prunable_weights(model, config.targets, config.ignore)
    masks = select_masks(magnitude_scores(params), config.sparsity, config.allocation)
    apply_masks_(dict(params), masks)


register_method(kind="prune", name="magnitude", config_cls=MagnitudePruneConfig, apply_fn=prune_magnitude_,
                description="unstructured L1-magnitude pruning (global, per tensor or per row)")

"""Random unstructured pruning: the baseline every scored method has to beat.

    prune_(model, RandomPruneConfig(sparsity=0.5, seed=0))

Scores are i.i.d. uniform from a generator seeded by `seed` (one stream per weight, derived from
the seed and the weight's position), so the same config prunes the same entries every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparseft.compress.prune.common import (apply_masks_, check_sparsity, check_targets, default_ignore,
                                            default_targets, prunable_weights, select_masks)
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method

_ALLOCATIONS = ("global", "per_tensor", "per_row")


@dataclass
class RandomPruneConfig(BaseConfig):
    """Args:
        sparsity: fraction of the targeted weights set to zero, in [0, 1).
        allocation: 'global', 'per_tensor' or 'per_row'.
        seed: seed of the random scores.
        targets / ignore: which modules' weights are pruned.
    """

    sparsity: float = 0.5
    allocation: str = "per_tensor"
    seed: int = 0
    targets: list[str] = field(default_factory=default_targets)
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.allocation not in _ALLOCATIONS:
            raise ValueError(f"allocation must be one of {_ALLOCATIONS}, got {self.allocation!r}")
        check_targets(self)


def random_scores(params: list[tuple[str, torch.nn.Parameter]], seed: int) -> dict[str, torch.Tensor]:
    """Uniform [0, 1) scores per entry, reproducible from (seed, weight index)."""
    out = {}
    for i, (name, p) in enumerate(params):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out[name] = torch.rand(p.shape, generator=gen)
    return out


@torch.no_grad()
def prune_random_(model: torch.nn.Module, config: RandomPruneConfig, *, batches=None) -> None:
    params = prunable_weights(model, config.targets, config.ignore)
    masks = select_masks(random_scores(params, config.seed), config.sparsity, config.allocation)
    apply_masks_(dict(params), masks)


register_method(kind="prune", name="random", config_cls=RandomPruneConfig, apply_fn=prune_random_,
                description="random unstructured pruning (baseline)")

"""N:M semi-structured magnitude pruning (2:4, 4:8): in every group of M consecutive input
weights of a row, keep the N largest |W|.

    prune_(model, NMPruneConfig(n=2, m=4))

2:4 is the pattern NVIDIA sparse tensor cores run at up to 2x matmul speed; on CPU it only saves
storage once exported in a compressed format. The input dimension of every targeted weight must
be a multiple of M. For data-aware N:M use WandaConfig / SparseGPTConfig with pattern="2:4".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparseft.compress.prune.common import (apply_masks_, check_targets, default_ignore, default_targets,
                                            nm_mask, prunable_weights)
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method


@dataclass
class NMPruneConfig(BaseConfig):
    """Args:
        n: weights kept per group. m: group size (consecutive input entries); 0 < n < m.
        targets / ignore: which modules' weights are pruned.
    """

    n: int = 2
    m: int = 4
    targets: list[str] = field(default_factory=default_targets)
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
            raise ValueError(f"N:M needs integers 0 < n < m (e.g. n=2, m=4), got n={self.n!r}, m={self.m!r}")
        check_targets(self)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m


@torch.no_grad()
def prune_nm_(model: torch.nn.Module, config: NMPruneConfig, *, batches=None) -> None:
    params = prunable_weights(model, config.targets, config.ignore)
    masks = {name: nm_mask(p.detach().abs(), config.n, config.m, name=name) for name, p in params}
    apply_masks_(dict(params), masks)


register_method(kind="prune", name="nm", config_cls=NMPruneConfig, apply_fn=prune_nm_,
                description="N:M semi-structured magnitude pruning (2:4, 4:8)")

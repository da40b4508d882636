"""`random` mask: a uniformly random subset of the targeted entries (the SFT baseline).

Scores are i.i.d. uniform draws from one `torch.Generator` seeded by `seed`, drawn tensor by
tensor in model order, so the same (model, config) always gives the same mask. With global
allocation the top-k of i.i.d. scores is a uniform random k-subset of all targeted entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseft.masks.config import MaskConfig
from sparseft.registry import register_method


@dataclass
class RandomMaskConfig(MaskConfig):
    """Args (plus MaskConfig's budget and targets):
        seed: seeds the draw (independent of the global RNG).
    """

    seed: int = 0


def random_scores(model, params: dict, cfg: RandomMaskConfig, *, batches=None, loss_fn=None) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed)
    return {name: torch.rand(p.shape, generator=gen) for name, p in params.items()}


register_method(kind="mask", name="random", config_cls=RandomMaskConfig, apply_fn=random_scores,
                description="uniformly random entries (seeded)")

"""`regrow` mask (dynamic, SpIEL-style; Ansell et al. 2024): start from an initial mask, then
every `every` optimizer steps drop the `drop_fraction` of each tensor's tuned entries with the
smallest |delta| and regrow as many where the gradient accumulated over the last `grad_window`
steps is largest (among entries that were not tuned), keeping the budget exact.

This file holds the config and the *initial* selection (`init`: random, magnitude or fisher).
The drop/regrow step itself is `sparseft.sft.regrow.RegrowHook`, a `post_step` hook that
`sparse_finetune` passes to the training loop; it also resets the optimizer state of the
regrown entries (see that module).

Per-tensor counts stay fixed during training (the trainable value vectors keep their shapes,
so the optimizer never sees a parameter change size); only *which* entries are tuned moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparseft.masks.config import MaskConfig
from sparseft.masks.fisher import gradient_scores
from sparseft.masks.magnitude import magnitude_scores
from sparseft.masks.random import RandomMaskConfig, random_scores
from sparseft.registry import register_method

INITS = ("random", "magnitude", "fisher")


@dataclass
class RegrowMaskConfig(MaskConfig):
    """Args (plus MaskConfig's budget and targets):
        init: initial selection, one of INITS.
        every: optimizer steps between two drop/regrow updates.
        drop_fraction: share of each tensor's entries replaced per update, in (0, 1).
        grad_window: steps before each update whose gradients are accumulated (dense gradients
            of the targeted weights are kept during these steps only).
        n_batches: batches for init="fisher".
        seed: seed for init="random".
    """

    init: str = "random"
    every: int = 100
    drop_fraction: float = 0.1
    grad_window: int = 10
    n_batches: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if not 0.0 < self.drop_fraction < 1.0:
            raise ValueError(f"drop_fraction must be in (0, 1), got {self.drop_fraction}")
        if not 1 <= self.grad_window <= self.every:
            raise ValueError(f"grad_window must be in [1, every={self.every}], got {self.grad_window}")
        if self.n_batches < 1:
            raise ValueError(f"n_batches must be >= 1, got {self.n_batches}")

    def batches_needed(self) -> int:
        return self.n_batches if self.init == "fisher" else 0


def initial_scores(model, params: dict, cfg, *, batches=None, loss_fn=None) -> dict:
    """Scores of the initial selection of the drop/regrow methods (regrow, spiel_ag, spiel_ma):
    `cfg.init` random / magnitude / fisher; reselection happens during training."""
    if cfg.init == "random":
        return random_scores(model, params, RandomMaskConfig(seed=cfg.seed))
    if cfg.init == "magnitude":
        return magnitude_scores(model, params, cfg)
    return gradient_scores(model, params, batches, cfg.n_batches, loss_fn)


register_method(kind="mask", name="regrow", config_cls=RegrowMaskConfig, apply_fn=initial_scores,
                description="dynamic drop (smallest |delta|) and regrow (largest gradients), SpIEL-style")

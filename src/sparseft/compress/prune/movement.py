"""Movement (gradient-based) pruning: keep the weights that move away from zero.

Score of an entry (Sanh et al., 2020): S = -sum_t dL/dW_t * W_t, summed over steps t. A weight
whose gradient pushes it away from zero gets a high score; one decaying toward zero a low one.

  * one-shot: `prune_(model, MovementPruneConfig(sparsity=0.5), batches=calib)` sums the score
    over labelled calibration batches (no weight update; a first-order Taylor importance);
  * during fine-tuning: `MovementScorer` accumulates S from the gradients of every optimizer step
    and the gradual schedule (schedule.py) prunes by it at each pruning step.

`score="adam"` replaces the raw sum by the scores Sanh et al. actually learn: S is trained by
Adam with dL/dS = dL/dW' * W, so each step moves S by the bias-corrected m / (sqrt(v) + eps) of
that gradient (a unit rate; a constant rate does not change the ranking). A step's contribution
is then about +-1 whatever |W| and the gradient's scale: the score counts how consistently an
entry moves toward or away from zero, where the raw sum is dominated by large |grad * W|.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterable

import torch

from sparseft.compress.prune.common import (LARGE_WEIGHT_WARNING, apply_masks_, check_allocation, check_sparsity,
                                            check_targets, default_ignore, default_targets, large_weight_share,
                                            prunable_weights, select_masks)
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method

SCORE_RULES = ("sum", "adam")
ADAM_BETAS = (0.9, 0.999)   # torch.optim.Adam's defaults, as in Sanh et al.'s mask-score optimizer
ADAM_EPS = 1e-8


def check_score_rule(rule: str) -> None:
    if rule not in SCORE_RULES:
        raise ValueError(f"score must be one of {SCORE_RULES}, got {rule!r}")


@dataclass
class MovementPruneConfig(BaseConfig):
    """Args:
        sparsity: fraction of the targeted weights set to zero, in [0, 1).
        allocation: 'global', 'per_tensor' or 'per_row'.
        score: 'sum' (S = -sum grad * W) or 'adam' (S learned by unit-rate Adam on dL/dS = grad * W,
            Sanh et al.'s learned scores; holds two more fp32 copies of the targeted weights).
        targets / ignore: which modules' weights are pruned.
    One-shot use needs labelled calibration batches (the loss must be defined).
    """

    sparsity: float = 0.5
    allocation: str = "global"
    score: str = "sum"
    targets: list[str] = field(default_factory=default_targets)
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        check_allocation(self.allocation)
        check_score_rule(self.score)
        check_targets(self)

    def needs_batches(self) -> bool:
        return True


class MovementScorer:
    """Accumulates S -= grad * W for the named weights (or, with rule='adam', trains S with a
    unit-rate torch.optim.Adam on dL/dS = grad * W); call `update(model)` after each step (before the gradients are
    zeroed), read `scores()` when pruning.

    `held` (set by a regrowing GradualPruner) maps a weight's name to (kept mask, held values):
    a pruned entry is zero in the model, so its score keeps accumulating with the value it had when
    it was pruned, -grad * W_held, the straight-through score of Sanh et al.'s hard movement (the
    gradient at a zeroed entry is dL/dW' of the masked weight)."""

    def __init__(self, names: Iterable[str], rule: str = "sum") -> None:
        check_score_rule(rule)
        self.names = list(names)
        self.rule = rule
        self.totals: dict[str, torch.Tensor] = {}
        self.adam: dict[str, torch.optim.Adam] = {}   # rule 'adam': one optimizer per score tensor
        self.held: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        for name in self.names:
            p = params[name]
            if p.grad is None:
                continue
            weight = p.detach().float()
            if name in self.held:
                kept, values = self.held[name]
                weight = torch.where(kept, weight, values)
            self.add(name, p.grad.float() * weight)   # dL/dS, [out, in]

    def add(self, name: str, grad_s: torch.Tensor) -> None:
        """One step's dL/dS = grad * W for weight `name`."""
        if self.rule == "adam":
            if name not in self.adam:
                self.totals[name] = torch.zeros_like(grad_s)
                self.adam[name] = torch.optim.Adam([self.totals[name]], lr=1.0, betas=ADAM_BETAS, eps=ADAM_EPS)
            self.totals[name].grad = grad_s
            self.adam[name].step()
        elif name in self.totals:
            self.totals[name] -= grad_s
        else:
            self.totals[name] = -grad_s

    def scores(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return {n: self.totals.get(n, torch.zeros_like(params[n], dtype=torch.float32)) for n in self.names}


def movement_scores(model: torch.nn.Module, params: list[tuple[str, torch.nn.Parameter]],
                    batches: list[dict], rule: str = "sum") -> dict[str, torch.Tensor]:
    """One-shot scores -sum_b dL_b/dW * W over calibration batches (weights are not changed);
    rule='adam' sums Adam-normalised steps instead (see MovementScorer)."""
    weights = [p for _, p in params]
    flags = [p.requires_grad for p in weights]
    was_training = model.training
    model.eval()  # no dropout: the scores are a deterministic function of the batches
    device = weights[0].device
    scorer = MovementScorer([n for n, _ in params], rule)
    try:
        for p in weights:
            p.requires_grad_(True)
        for batch in batches:
            if "labels" not in batch:
                raise ValueError("movement pruning needs labelled batches (a 'labels' key) to compute the loss")
            out = model(**{k: v.to(device) for k, v in batch.items()})
            grads = torch.autograd.grad(out.loss, weights)
            for (name, p), g in zip(params, grads):
                scorer.add(name, g.float() * p.detach().float())
    finally:
        for p, flag in zip(weights, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return scorer.scores(model)


def prune_movement_(model: torch.nn.Module, config: MovementPruneConfig, *, batches=None) -> None:
    if not batches:
        raise ValueError("movement pruning needs labelled calibration batches")
    params = prunable_weights(model, config.targets, config.ignore)
    masks = select_masks(movement_scores(model, params, batches, config.score), config.sparsity, config.allocation)
    large = large_weight_share(model, {}, masks)
    if large > LARGE_WEIGHT_WARNING:
        warnings.warn(f"movement pruning: {large:.0%} of the pruned weights are larger than their tensor's median "
                      f"|W| (the scores of an already fine-tuned model are gradient noise times |W|); consider "
                      f"pruner 'magnitude', or movement pruning during fine-tuning from the pretrained model",
                      stacklevel=2)
    apply_masks_(dict(params), masks)


register_method(kind="prune", name="movement", config_cls=MovementPruneConfig, apply_fn=prune_movement_,
                description="movement / gradient-based pruning (one-shot Taylor or accumulated in fine-tuning)")

"""`lottery` mask (LT-SFT, Ansell et al. 2022): fine-tune densely for a short phase, keep the
entries that moved most (top-k |W - W0|), rewind every weight to W0, then train sparsely.

The dense phase is a plain AdamW loop over `steps` training batches (cycling if fewer are given)
on every parameter that requires grad, with linear warm-up, gradient clipping at 1.0 and the
model in train mode. It runs in the weights' own dtype (no autocast): it is short, and it only
has to rank entries. Afterwards *all* parameters (including new heads) are restored bit for bit
from a copy taken before the phase, so selection leaves the model exactly as it found it.
Memory during the phase is that of full fine-tuning (weights + gradients + AdamW state + copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseft.masks.config import MaskConfig
from sparseft.masks.fisher import take_batches, to_device
from sparseft.registry import register_method


@dataclass
class LotteryMaskConfig(MaskConfig):
    """Args (plus MaskConfig's budget and targets):
        steps: optimizer steps of the dense phase (one batch each).
        lr: peak learning rate of the dense phase (AdamW, 10% linear warm-up, then constant).
        weight_decay: AdamW weight decay in the dense phase.
    """

    steps: int = 200
    lr: float = 1e-4
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def batches_needed(self) -> int:
        return self.steps


def dense_phase_(model, batches, cfg: LotteryMaskConfig, loss_fn, device) -> None:
    """Lottery's dense phase: AdamW on every parameter that requires grad, linear warm-up over the
    first 10% of `cfg.steps`, gradient clipping at 1.0; one step per batch (model left in train mode)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    for batch in batches:
        loss = loss_fn(model, to_device(batch, device))
        if not torch.isfinite(loss):
            raise RuntimeError(f"lottery dense phase diverged (loss {loss.item()}); lower `lr` ({cfg.lr})")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)


def lottery_scores(model, params: dict, cfg: LotteryMaskConfig, *, batches=None, loss_fn=None) -> dict:
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in params.values():  # targeted weights must move even if the caller froze them
        p.requires_grad_(True)
    was_training = model.training
    device = next(iter(params.values())).device
    try:
        dense_phase_(model, take_batches(batches, cfg.steps), cfg, loss_fn, device)
        scores = {name: (p.detach() - initial[name]).abs().float() for name, p in params.items()}
    finally:
        with torch.no_grad():  # rewind to W0: every parameter, bit for bit
            for name, p in model.named_parameters():
                p.copy_(initial[name])
                p.requires_grad_(flags[name])
                p.grad = None
        model.train(was_training)
    return scores


register_method(kind="mask", name="lottery", config_cls=LotteryMaskConfig, apply_fn=lottery_scores,
                description="LT-SFT: top-k |W - W0| after a short dense phase, then rewind")

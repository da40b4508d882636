"""Learning-rate schedules as LambdaLR factors (state is just the step: resumable)."""

from __future__ import annotations

import torch


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                        ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear 0 -> lr over `warmup_steps`, then linear lr -> 0 at `total_steps`."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""`fisher` mask (FISH mask, Sung et al. 2021): entries with the largest accumulated squared
gradient of the task loss over `n_batches` training batches, an empirical-Fisher estimate of
how much each weight matters for the task.

Selection briefly needs dense gradients of the targeted weights (O(N) memory, during selection
only): each weight's `requires_grad` is switched on for the pass and restored afterwards. The
model runs in eval mode (no dropout), so the mask is a deterministic function of the batches.
Batch-level gradients are used (sum over examples before squaring), the usual cheap
approximation of per-example Fisher.

The helpers `to_device` and `take_batches` are shared with the lottery and regrow methods.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from sparseft.masks.config import MaskConfig
from sparseft.registry import register_method


@dataclass
class FisherMaskConfig(MaskConfig):
    """Args (plus MaskConfig's budget and targets):
        n_batches: training batches whose squared gradients are summed.
    """

    n_batches: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_batches < 1:
            raise ValueError(f"n_batches must be >= 1, got {self.n_batches}")

    def batches_needed(self) -> int:
        return self.n_batches


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def take_batches(batches: Iterable[dict], n: int) -> Iterator[dict]:
    """`n` batches, cycling through `batches` again if it holds fewer (a list, not a generator)."""
    batches = list(batches)
    if not batches:
        raise ValueError("no batches given for mask selection")
    return itertools.islice(itertools.cycle(batches), n)


def gradient_scores(model, params: dict, batches: Iterable[dict], n_batches: int, loss_fn,
                    ) -> dict[str, torch.Tensor]:
    """sum_b grad_b(W)^2 for each targeted weight (fp32, on the weight's device)."""
    return gradient_moments(model, params, batches, n_batches, loss_fn)[0]


def gradient_moments(model, params: dict, batches: Iterable[dict], n_batches: int, loss_fn, *,
                     first: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(sum_b grad_b^2, sum_b grad_b or None) per targeted weight (fp32, on the weight's device);
    the first moment only with `first` (one more buffer of the weights' size)."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    was_training = model.training
    model.eval()
    zeros = lambda: {name: torch.zeros(p.shape, dtype=torch.float32, device=p.device)  # noqa: E731
                     for name, p in params.items()}
    squares, sums = zeros(), (zeros() if first else None)
    device = next(iter(params.values())).device
    try:
        for batch in take_batches(batches, n_batches):
            loss = loss_fn(model, to_device(batch, device))
            grads = torch.autograd.grad(loss, list(params.values()))
            for name, g in zip(params, grads):
                g = g.float()
                squares[name] += g.pow(2)
                if sums is not None:
                    sums[name] += g
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)
    return squares, sums


def fisher_scores(model, params: dict, cfg: FisherMaskConfig, *, batches=None, loss_fn=None) -> dict:
    return gradient_scores(model, params, batches, cfg.n_batches, loss_fn)


register_method(kind="mask", name="fisher", config_cls=FisherMaskConfig, apply_fn=fisher_scores,
                description="largest accumulated squared gradients (FISH mask)")

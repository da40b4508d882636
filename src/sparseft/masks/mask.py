"""Shared mask machinery for sparse fine-tuning and pruning.

A mask set is a plain `dict[str, torch.BoolTensor]`: parameter fqn -> bool tensor of the
parameter's shape (True = selected). Helpers here turn scores into masks under a budget:

  * `budget_count(n_total, density=..., count=...)` -> k
  * `topk_masks(scores, k, allocation="global" | "per_tensor")` -> masks with exactly k True
    (ties broken by index order, so the count is exact)
  * `reapply_masks_(model, masks)` zeroes unselected entries in place (pruning's post-step)
  * `mask_stats(masks)` -> counts and densities for reports
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

Masks = dict[str, torch.Tensor]
ALLOCATIONS = ("global", "per_tensor")


def budget_count(n_total: int, *, density: float | None = None, count: int | None = None) -> int:
    """Number of entries to select from `n_total`: exactly one of density (0, 1] or count."""
    if (density is None) == (count is None):
        raise ValueError("give exactly one of density or count")
    if density is not None:
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        k = int(round(density * n_total))
        return max(1, min(n_total, k))
    if count is None or count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if count > n_total:
        raise ValueError(f"count {count} exceeds the {n_total} targeted entries")
    return count


def _topk_flat(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask with exactly k True at the largest values of a 1-D tensor."""
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        # stable: equal scores keep index order; topk on float64 avoids precision ties of fp16/bf16
        idx = torch.topk(flat.double(), k, sorted=False).indices
        mask[idx] = True
    return mask


def topk_masks(scores: Mapping[str, torch.Tensor], k: int, *, allocation: str = "global") -> Masks:
    """Select the k highest-scoring entries across `scores` (global) or k_i per tensor.

    per_tensor gives each tensor round(k * n_i / N) entries, with the rounding remainder handed
    to the largest tensors so that the total is exactly k.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    total = sum(sizes)
    if not 0 < k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    if allocation == "global":
        flat = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in names])
        sel = _topk_flat(flat, k)
        out, start = {}, 0
        for n, size in zip(names, sizes):
            out[n] = sel[start:start + size].reshape(scores[n].shape).to(scores[n].device)
            start += size
        return out
    quotas = [math.floor(k * s / total) for s in sizes]
    for i in sorted(range(len(names)), key=lambda i: -sizes[i])[: k - sum(quotas)]:
        quotas[i] += 1
    return {n: _topk_flat(scores[n].detach().reshape(-1), q).reshape(scores[n].shape)
            for n, q in zip(names, quotas)}


@torch.no_grad()
def reapply_masks_(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every entry not selected by `masks` (in place). Pruning calls this after each step."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"mask for unknown parameter {name!r}")
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


def mask_stats(masks: Mapping[str, torch.Tensor]) -> dict:
    """{"selected", "total", "density", "per_tensor": {name: density}}."""
    selected = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {"selected": selected, "total": total, "density": selected / total if total else 0.0,
            "per_tensor": {n: float(m.float().mean()) for n, m in masks.items()}}

"""Shared pieces of the pruning methods: targets, budgets, mask patterns and sparsity stats.

A pruning mask uses the convention of `sparseft.masks.mask`: True = the weight is kept. Every
unstructured method turns per-entry scores (higher = more important) into a mask with
`select_masks(scores, sparsity, allocation)`:

  * "global"     - one threshold over all targeted weights (layers end up with different sparsity);
  * "per_tensor" - every weight matrix gets the same sparsity;
  * "per_row"    - every output row of every matrix gets the same sparsity (Wanda's comparison
                   group; rows of a [out, in] Linear weight).

N:M masks (`nm_mask`) keep the N highest scores in every group of M consecutive input entries of
a row, the layout sparse tensor cores accelerate (2:4). Counts are exact: a budget of
round(sparsity * n) pruned entries per group is always met (ties broken by index order).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from sparseft.config.targets import TargetSpec, select_parameters
from sparseft.masks.mask import Masks, topk_masks

# Task heads stay dense by default: they are small, and lm_head is tied to the embeddings.
DEFAULT_IGNORE = ["classifier", "lm_head", "score", "pooler.dense"]
ALLOCATIONS = ("global", "per_tensor", "per_row")
_NM_RE = re.compile(r"^(\d+):(\d+)$")


def default_targets() -> list[str]:
    return ["Linear"]


def default_ignore() -> list[str]:
    return list(DEFAULT_IGNORE)


def check_sparsity(value: float, name: str = "sparsity") -> None:
    """Raise ValueError unless 0 <= value < 1 (1.0 would delete a whole layer)."""
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")


def check_allocation(value: str, valid: tuple[str, ...] = ALLOCATIONS) -> None:
    if value not in valid:
        raise ValueError(f"allocation must be one of {valid}, got {value!r}")


def check_targets(cfg) -> None:
    """Validate the `targets` / `ignore` fields of a pruning config (regexes compile, not empty)."""
    TargetSpec(targets=cfg.targets, ignore=cfg.ignore)


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """'unstructured' -> None; 'N:M' (e.g. '2:4', '4:8') -> (N, M) with 0 < N < M."""
    if pattern == "unstructured":
        return None
    match = _NM_RE.match(str(pattern))
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if 0 < n < m:
            return n, m
    raise ValueError(f"pattern must be 'unstructured' or 'N:M' with 0 < N < M (e.g. '2:4', '4:8'), "
                     f"got {pattern!r}")


def prunable_weights(model: torch.nn.Module, targets: list[str], ignore: list[str]
                     ) -> list[tuple[str, torch.nn.Parameter]]:
    """[(fqn, weight)] of the targeted 2-D weights (Linear-like [out, in]); errors if none."""
    params = select_parameters(model, TargetSpec(targets=targets, ignore=ignore))
    params = [(n, p) for n, p in params if p.ndim == 2]
    if not params:
        raise ValueError(f"targets {targets} (ignore {ignore}) select no 2-D weight to prune")
    return params


def n_pruned(n: int, sparsity: float) -> int:
    """Entries to remove out of n at `sparsity` (rounded to the nearest count)."""
    return int(round(sparsity * n))


def per_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool [out, in]: in every row keep the in - round(sparsity * in) highest scores."""
    rows, cols = scores.shape
    keep = cols - n_pruned(cols, sparsity)
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    if keep > 0:
        idx = torch.topk(scores.double(), keep, dim=1, sorted=False).indices  # [out, keep]
        mask.scatter_(1, idx, True)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int, *, name: str = "weight") -> torch.Tensor:
    """Bool [out, in]: keep the n highest scores in each group of m consecutive input entries."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{name}: {cols} input features are not a multiple of M={m}; "
                         f"N:M sparsity needs whole groups (add it to `ignore`)")
    groups = scores.double().reshape(rows, cols // m, m)              # [out, in/m, m]
    idx = torch.topk(groups, n, dim=-1, sorted=False).indices           # [out, in/m, n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def select_masks(scores: Mapping[str, torch.Tensor], sparsity: float, allocation: str) -> Masks:
    """Masks that prune exactly round(sparsity * n) entries per allocation group."""
    check_allocation(allocation)
    if allocation == "per_row":
        return {name: per_row_mask(s, sparsity) for name, s in scores.items()}
    total = sum(s.numel() for s in scores.values())
    keep = total - n_pruned(total, sparsity)
    if allocation == "per_tensor":
        # each tensor prunes round(sparsity * n_i): exact per layer (topk_masks would share the
        # rounding remainder across tensors instead)
        return {name: per_row_mask(s.reshape(1, -1), sparsity).reshape(s.shape) for name, s in scores.items()}
    return topk_masks(scores, keep, allocation="global")


@torch.no_grad()
def nonzero_masks(model: torch.nn.Module, targets: list[str] | None = None,
                  ignore: list[str] | None = None) -> Masks:
    """Masks of the entries that are currently nonzero: recovers a pruned model's masks so that
    fine-tuning can keep pruned weights at exactly zero (`reapply_masks_` after every step)."""
    params = prunable_weights(model, targets or default_targets(),
                              default_ignore() if ignore is None else ignore)
    return {name: p.detach() != 0 for name, p in params}


@torch.no_grad()
def sparsity_report(model: torch.nn.Module, targets: list[str] | None = None,
                    ignore: list[str] | None = None) -> dict:
    """Zeros per targeted weight and in total: {"sparsity", "zeros", "entries", "per_layer"}.

    `per_layer` is a list of [fqn, sparsity] pairs (lists go to metrics.json, not the report table).
    """
    params = prunable_weights(model, targets or default_targets(),
                              default_ignore() if ignore is None else ignore)
    per_layer, zeros, entries = [], 0, 0
    for name, p in params:
        z = int((p.detach() == 0).sum())
        per_layer.append([name, z / p.numel()])
        zeros += z
        entries += p.numel()
    return {"sparsity": zeros / entries, "zeros": zeros, "entries": entries, "per_layer": per_layer}


@torch.no_grad()
def apply_masks_(params: Mapping[str, torch.nn.Parameter], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the unselected entries of the given parameters (fqn -> parameter), in place."""
    for name, mask in masks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


# a pruning step that removes mostly above-median weights is anti-magnitude: warn (movement scores)
LARGE_WEIGHT_WARNING = 0.6


@torch.no_grad()
def large_weight_share(model: torch.nn.Module, before: Masks, after: Masks) -> float:
    """Fraction of the entries pruned by going from masks `before` to `after` whose |W| is above the
    median |W| of their tensor's entries alive before (about 0 for magnitude pruning, about 0.5 for
    random pruning)."""
    params = dict(model.named_parameters())
    above = total = 0
    for name, keep in after.items():
        w = params[name].detach().abs()
        alive = before[name].to(w.device) if name in before else torch.ones_like(w, dtype=torch.bool)
        new = alive & ~keep.to(w.device)
        n = int(new.sum())
        if n:
            above += int((w[new] > w[alive].median()).sum())
            total += n
    return above / total if total else 0.0

"""`magnitude` mask: the entries with the largest |W0| (data-free).

Large pretrained weights are the ones the network already relies on; tuning them is a cheap,
data-free heuristic. With global allocation, tensors with larger typical magnitude (e.g. small
fan-in layers) get a larger share; use `allocation: per_tensor` to spread the budget evenly.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparseft.masks.config import MaskConfig
from sparseft.registry import register_method


@dataclass
class MagnitudeMaskConfig(MaskConfig):
    """MaskConfig's budget and targets; no extra fields."""


def magnitude_scores(model, params: dict, cfg: MagnitudeMaskConfig, *, batches=None, loss_fn=None) -> dict:
    return {name: p.detach().abs() for name, p in params.items()}


register_method(kind="mask", name="magnitude", config_cls=MagnitudeMaskConfig, apply_fn=magnitude_scores,
                description="largest |W0| (data-free)")

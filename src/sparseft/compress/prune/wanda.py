"""Wanda (Sun et al., 2023): prune by |W| x ||X||, weight magnitude times input activation norm.

Score of entry (i, j) of a Linear weight W [out, in]: |W_ij| * ||X_j||_2, where X_j is input
feature j over all calibration tokens. Features with large activations (the outliers of LLMs)
protect their weights even when small. No weight update, one pass per block (layerwise.py).

    prune_(model, WandaConfig(sparsity=0.5), batches=calib)            # unstructured, per row
    prune_(model, WandaConfig(pattern="2:4"), batches=calib)           # N:M

Comparison groups as in the paper: each output row ("per_row", default) for unstructured, each
group of M inputs for N:M. Calibration batches: dicts with input_ids / attention_mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparseft.compress.prune.common import (check_sparsity, check_targets, default_ignore, default_targets,
                                            nm_mask, parse_pattern, select_masks)
from sparseft.compress.prune.layerwise import layerwise_prune_
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method

_ALLOCATIONS = ("per_row", "per_tensor")


def check_pattern_sparsity(pattern: str, sparsity: float) -> None:
    """An N:M pattern fixes the sparsity at 1 - N/M: a different `sparsity` is a user error."""
    nm = parse_pattern(pattern)
    if nm is not None and abs(sparsity - (1 - nm[0] / nm[1])) > 1e-9:
        raise ValueError(f"pattern {pattern!r} fixes sparsity at {1 - nm[0] / nm[1]:g}; got sparsity={sparsity}")


@dataclass
class WandaConfig(BaseConfig):
    """Args:
        sparsity: fraction set to zero (unstructured); must equal 1 - N/M for an N:M pattern.
        pattern: 'unstructured' or 'N:M' (e.g. '2:4', '4:8').
        allocation: unstructured comparison group, 'per_row' (paper) or 'per_tensor'.
        sequential: calibrate each block's layers group by group in call order (see SparseGPTConfig);
            False (the paper) calibrates a whole block on its dense inputs.
        targets / ignore: which Linear layers inside the transformer blocks are pruned.
    """

    sparsity: float = 0.5
    pattern: str = "unstructured"
    allocation: str = "per_row"
    sequential: bool = False
    targets: list[str] = field(default_factory=default_targets)
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        parse_pattern(self.pattern)
        check_pattern_sparsity(self.pattern, self.sparsity)
        if self.allocation not in _ALLOCATIONS:
            raise ValueError(f"allocation must be one of {_ALLOCATIONS}, got {self.allocation!r}")
        check_targets(self)

    def needs_batches(self) -> bool:
        return True


class InputNorms:
    """Running sum of squares of each input feature: ||X_j||^2 over calibration tokens."""

    def __init__(self, layer: torch.nn.Linear) -> None:
        self.sq = torch.zeros(layer.in_features, dtype=torch.float32, device=layer.weight.device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:  # x: [n_tokens, in]
        self.sq += (x * x).sum(0)
        self.tokens += x.shape[0]


def wanda_scores(weight: torch.Tensor, norms: InputNorms) -> torch.Tensor:
    """|W| * ||X_j||_2 broadcast over rows: [out, in]."""
    return weight.detach().abs().float() * norms.sq.sqrt().unsqueeze(0)


def prune_wanda_(model: torch.nn.Module, config: WandaConfig, *, batches=None) -> None:
    if not batches:
        raise ValueError("wanda needs calibration batches")
    nm = parse_pattern(config.pattern)

    @torch.no_grad()
    def prune_layer(name: str, layer: torch.nn.Linear, stats: InputNorms) -> None:
        scores = wanda_scores(layer.weight, stats)
        if nm is not None:
            mask = nm_mask(scores, nm[0], nm[1], name=name)
        else:
            mask = select_masks({name: scores}, config.sparsity, config.allocation)[name]
        layer.weight.mul_(mask.to(layer.weight.dtype))

    layerwise_prune_(model, batches, config.targets, config.ignore, InputNorms, prune_layer,
                     sequential=config.sequential)


register_method(kind="prune", name="wanda", config_cls=WandaConfig, apply_fn=prune_wanda_,
                description="one-shot Wanda |W|*||X|| pruning (unstructured or N:M), layer by layer")

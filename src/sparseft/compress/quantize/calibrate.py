"""Layer-by-layer quantization with calibration data (GPTQ, activation-weighted k-means).

The block-by-block machinery is the pruning package's (`compress/prune/layerwise.py`: capture
the inputs of block 0, then per block collect statistics of every targeted Linear's inputs,
transform the layers, and rerun the transformed block to feed the next one), so pruning and
quantization calibrate the same way. Here the per-layer transform builds a `QuantLinear`; the
Linear's weight is overwritten with the dequantized values right away (so later blocks are
calibrated on what the quantized model computes), and the modules are swapped at the end.

Also `ActivationStats`: the per-input mean of x^2 (the diagonal of X^T X / n), the importance
that weights k-means clustering.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn as nn

from sparseft.compress.quantize.layers import QuantLinear, set_module


class Stats(Protocol):
    def add(self, x: torch.Tensor) -> None:  # x: [n_tokens, in_features]
        ...


class ActivationStats:
    """Running mean of x_j^2 per input feature j: [in_features]."""

    def __init__(self, layer: nn.Linear) -> None:
        self.sum_sq = torch.zeros(layer.in_features, dtype=torch.float64, device=layer.weight.device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        self.sum_sq += x.double().pow(2).sum(0)
        self.n += x.shape[0]

    def mean(self) -> torch.Tensor:
        return (self.sum_sq / max(1, self.n)).float()


def check_batches(batches, method: str) -> list[dict]:
    batches = list(batches) if batches is not None else []
    if not batches:
        raise ValueError(f"quantization method {method!r} needs calibration batches (batches=[...]: dicts "
                         f"with input_ids/attention_mask); in a recipe give training data")
    return batches


@torch.no_grad()
def layerwise_quantize_(model: nn.Module, batches: list[dict], targets: list[str], ignore: list[str],
                        make_stats: Callable[[nn.Linear], Stats],
                        quantize_layer: Callable[[str, nn.Linear, Stats], QuantLinear], *,
                        sequential: bool = False) -> None:
    """Quantize every targeted Linear block by block; see the module docstring.

    Args:
        make_stats: builds the empty input statistics of one layer.
        quantize_layer: (module fqn, layer, its statistics) -> the QuantLinear that replaces it.
        sequential: calibrate each block's layers group by group in call order (layerwise_prune_'s
            option), so a later group sees what the already quantized earlier ones compute.
    """
    from sparseft.compress.prune.layerwise import layerwise_prune_  # shared calibration loop

    done: dict[str, QuantLinear] = {}

    def transform(weight_fqn: str, layer: nn.Linear, stats: Stats) -> None:
        fqn = weight_fqn.removesuffix(".weight")
        qlayer = quantize_layer(fqn, layer, stats)
        layer.weight.data.copy_(qlayer.dequantize().to(layer.weight.dtype))  # fake-quant until swap
        done[fqn] = qlayer

    layerwise_prune_(model, batches, targets, ignore, make_stats, transform, sequential=sequential)
    for fqn, qlayer in done.items():
        set_module(model, fqn, qlayer)

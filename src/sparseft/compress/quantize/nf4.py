"""NF4 weight-only quantization (QLoRA's 4-bit NormalFloat, Dettmers et al. 2023).

A non-uniform 4-bit grid: the 16 levels are quantiles of a standard normal rescaled to [-1, 1]
(with an exact 0), so more levels sit near 0 where normally distributed weights are dense.
Each block of `block_size` inputs of a row is scaled by its absolute maximum and every weight
takes the nearest level. Stored as packed 4-bit codes + one fp32 absmax per block + the shared
16-entry codebook. No data needed; pruned zeros map to the exact-0 level and stay 0.
Double quantization of the absmax values (QLoRA's second trick) is not implemented: it saves
~0.4 bits/weight at block size 64 and matters for 65B models, much less for ours.

    >>> quantize_(model, NF4Config(block_size=64))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparseft.compress.quantize.layers import (QuantLinear, check_targets, default_ignore, set_module,
                                               target_linears)
from sparseft.compress.quantize.pack import expand_groups, grouped
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method

# The NF4 levels as published with QLoRA / bitsandbytes (index 7 is exactly 0).
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
              0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
              0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)


@dataclass
class NF4Config(BaseConfig):
    """Args:
        block_size: inputs per absmax scale (QLoRA uses 64); a ragged last block is allowed.
        targets / ignore: which Linear layers.
    """

    block_size: int = 64
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        check_targets(self.targets, self.ignore)


def nf4_codebook() -> torch.Tensor:
    """The 16 NF4 levels as float16 [1, 16] (fp16 holds them to ~1e-3; 0 and +-1 exactly)."""
    return torch.tensor(NF4_LEVELS, dtype=torch.float32).to(torch.float16).unsqueeze(0)


def nf4_layer(linear: torch.nn.Linear, cfg: NF4Config) -> QuantLinear:
    weight = linear.weight.detach().float()                                   # [out, in]
    out, cols = weight.shape
    bs = min(cfg.block_size, cols)
    absmax = grouped(weight, bs).abs().amax(-1)                               # [out, G]
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))        # all-zero block
    normed = weight / expand_groups(absmax, bs, cols)                         # [out, in] in [-1, 1]
    levels = nf4_codebook().float()[0].to(weight.device)                     # [16], as stored
    # nearest level: midpoints between sorted levels -> bucket index (no [out, in, 16] tensor)
    mids = (levels[1:] + levels[:-1]) / 2                                     # [15]
    codes = torch.bucketize(normed, mids).to(torch.uint8)                    # [out, in] in 0..15
    return QuantLinear.from_codes(codes, bits=4, group_size=bs, method="nf4", bias=linear.bias,
                                  scale=absmax, codebook=nf4_codebook()).to(linear.weight.device)


@torch.no_grad()
def quantize_nf4_(model: torch.nn.Module, cfg: NF4Config, *, batches=None) -> None:
    """Swap every targeted Linear for its NF4 QuantLinear (batches unused)."""
    for fqn, linear in target_linears(model, cfg.targets, cfg.ignore):
        set_module(model, fqn, nf4_layer(linear, cfg))


register_method(kind="quantize", name="nf4", config_cls=NF4Config, apply_fn=quantize_nf4_,
                description="4-bit NormalFloat weights with per-block absmax (QLoRA)")

"""Uniform round-to-nearest (RTN) weight-only quantization: int8 / int4, symmetric or asymmetric,
per tensor, per output channel or per group of `group_size` inputs.

The simplest baseline: every weight is rounded to the nearest point of its group's grid (see
pack.py for the grids), no data needed. Pruned zeros stay exactly zero on every grid because
0 is always representable. Linear layers are swapped for `QuantLinear`; nn.Embedding tables
too when the targets name them (e.g. targets=["Linear", "Embedding"]) for `QuantEmbedding`,
which decodes only the looked-up rows (the word embeddings are half of MiniLM's weights).

    >>> quantize_(model, RTNConfig(bits=4, granularity="group", group_size=128))  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from sparseft.compress.quantize.layers import (QuantEmbedding, QuantLinear, check_targets, default_ignore,
                                               set_module, shared_weight_users, target_modules)
from sparseft.compress.quantize.pack import GRANULARITIES, quantize_uniform
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method

BITS = (2, 3, 4, 8)


def check_grid(bits: int, granularity: str, group_size: int) -> None:
    """Validate an integer grid (shared by RTN and GPTQ configs)."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")


@dataclass
class RTNConfig(BaseConfig):
    """Args:
        bits: 8 or 4 (2 and 3 are accepted for experiments; codes are stored in 4 bits).
        symmetric: zero-centred grid (True) or min/max grid with an integer zero point (False).
        granularity: 'tensor', 'channel' (one scale per output row) or 'group'.
        group_size: inputs per scale when granularity='group' (a ragged last group is allowed).
        targets / ignore: which layers (see sparseft.config.targets); Linear and Embedding count.
    """

    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"
    group_size: int = 128
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        check_grid(self.bits, self.granularity, self.group_size)
        check_targets(self.targets, self.ignore)


def rtn_layer(linear: torch.nn.Linear, cfg: RTNConfig, method: str = "rtn") -> QuantLinear:
    """A QuantLinear holding the RTN codes of `linear.weight`."""
    weight = linear.weight.detach().float()                                  # [out, in]
    codes, scale, zero, gs = quantize_uniform(weight, cfg.bits, cfg.symmetric, cfg.granularity,
                                              cfg.group_size)
    return QuantLinear.from_codes(codes, bits=cfg.bits, group_size=gs, method=method, bias=linear.bias,
                                  scale=scale, zero=zero, symmetric=cfg.symmetric).to(linear.weight.device)


def rtn_embedding(emb: torch.nn.Embedding, cfg: RTNConfig) -> QuantEmbedding:
    """A QuantEmbedding holding the RTN codes of `emb.weight` (groups along the vector)."""
    codes, scale, zero, gs = quantize_uniform(emb.weight.detach().float(), cfg.bits, cfg.symmetric,
                                              cfg.granularity, cfg.group_size)
    return QuantEmbedding.from_codes(codes, bits=cfg.bits, group_size=gs, scale=scale, zero=zero,
                                     symmetric=cfg.symmetric, padding_idx=emb.padding_idx).to(emb.weight.device)


@torch.no_grad()
def quantize_rtn_(model: torch.nn.Module, cfg: RTNConfig, *, batches=None) -> None:
    """Swap every targeted Linear (and Embedding) for its RTN-quantized layer (batches unused)."""
    chosen = target_modules(model, cfg.targets, cfg.ignore, (torch.nn.Linear, torch.nn.Embedding))
    for fqn, module in chosen:
        if isinstance(module, torch.nn.Embedding):
            users = shared_weight_users(model, module.weight)
            if len(users) > 1:
                warnings.warn(f"{fqn}.weight is tied to {users}; only the embedding is quantized, the other "
                              f"users keep the full-precision tensor", RuntimeWarning, stacklevel=2)
            set_module(model, fqn, rtn_embedding(module, cfg))
        else:
            set_module(model, fqn, rtn_layer(module, cfg))


register_method(kind="quantize", name="rtn", config_cls=RTNConfig, apply_fn=quantize_rtn_,
                description="uniform round-to-nearest int8/int4 weights, per tensor/channel/group")

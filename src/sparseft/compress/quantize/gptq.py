"""GPTQ: error-compensated weight quantization with calibration data (Frantar et al., 2022).

Round-to-nearest quantizes every weight on its own. GPTQ quantizes the columns (inputs) of a
Linear weight W [out, in] one at a time and, after each, updates the not-yet-quantized columns
so that the layer's output on the calibration inputs X changes as little as possible: with
H = X^T X (+ damping), the error e = (w - q) / [H^-1]_ii of column i is spread over the later
columns as W[:, j] -= e * [H^-1]_ij (the Optimal Brain Surgeon update), using the upper Cholesky
factor of H^-1 and lazy block updates of `block_size` columns as in the reference code.

The grid is exactly RTN's (pack.py): same bits / symmetric / granularity / group_size, so int4
GPTQ and int4 RTN differ only in which codes are chosen. Group scales are computed when the
group's first column is reached, from the already-updated weights (as the reference does).
Weights that are exactly 0 before quantization (a pruned model) are fixed at 0 and their
"error" is compensated by the other weights, as in SparseGPT, so zeros stay exactly zero.
Calibration runs block by block (calibrate.py): each decoder block sees the outputs of the
already-quantized blocks before it; with `sequential=True` the layers inside a block are
quantized group by group too (the reference's "true sequential": o_proj is calibrated on what the
quantized q/k/v compute, down_proj on the quantized gate/up). Activation reordering (act_order) is
not implemented.

    >>> quantize_(model, GPTQConfig(bits=4, group_size=128), batches=calib)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from sparseft.compress.quantize.calibrate import check_batches, layerwise_quantize_
from sparseft.compress.quantize.layers import QuantLinear, check_targets, default_ignore
from sparseft.compress.quantize.pack import (affine_params, dequantize_codes,
                                             group_size_for, n_groups, quantize_codes)
from sparseft.compress.quantize.rtn import check_grid
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method


@dataclass
class GPTQConfig(BaseConfig):
    """Args:
        bits / symmetric / granularity / group_size: the integer grid (as RTNConfig).
        block_size: columns per lazy-update block (128 in the paper; only speed depends on it).
        damp: damping added to H's diagonal, as a fraction of its mean diagonal (0.01 = 1%).
        sequential: inside each transformer block, calibrate and quantize the layers group by group
            in call order (GPTQ's "true sequential", as SparseGPTConfig.sequential); False
            calibrates a whole block on the outputs of the quantized blocks before it.
        targets / ignore: which Linear layers (they must sit inside the transformer blocks).
    """

    bits: int = 4
    symmetric: bool = True
    granularity: str = "group"
    group_size: int = 128
    block_size: int = 128
    damp: float = 0.01
    sequential: bool = False
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        check_grid(self.bits, self.granularity, self.group_size)
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"damp must be in (0, 1), got {self.damp}")
        check_targets(self.targets, self.ignore)

    def needs_batches(self) -> bool:
        return True


class HessianStats:
    """H = sum_t x_t x_t^T over calibration tokens: [in, in] (float64 for a stable Cholesky)."""

    def __init__(self, layer: nn.Linear) -> None:
        n = layer.in_features
        self.H = torch.zeros(n, n, dtype=torch.float64, device=layer.weight.device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:  # x: [n_tokens, in]
        x = x.double()
        self.H += x.T @ x
        self.n += x.shape[0]


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, float32 [in, in]."""
    H = H.clone()
    diag = torch.diagonal(H)
    dead = diag == 0
    diag[dead] = 1.0  # an input never seen: decoupled from the others, plain rounding
    diag += damp * float(diag.mean())
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, *, bits: int, symmetric: bool, granularity: str,
                  group_size: int, block_size: int = 128, damp: float = 0.01
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """GPTQ on one weight matrix.

    Args:
        weight: [out, in]; H: [in, in] sum of x x^T over calibration inputs.
    Returns:
        (codes [out, in] uint8, scale [R, G], zero [R, G], group size), the same layout as
        pack.quantize_uniform, so a QuantLinear decodes both alike.
    """
    W = weight.detach().float().clone()                                       # [out, in]
    rows, cols = W.shape
    keep = W != 0                                                             # pruned zeros stay 0
    Hinv = _inverse_cholesky(H.to(W.device), damp)                            # [in, in] upper
    gs = group_size_for(granularity, group_size, cols)
    if granularity == "tensor":
        scale, zero = (t.reshape(1, 1) for t in affine_params(W.reshape(1, -1), bits, symmetric))
    elif granularity == "channel":
        scale, zero = (t.reshape(rows, 1) for t in affine_params(W, bits, symmetric))
    else:  # filled group by group below
        scale = torch.ones(rows, n_groups(cols, gs), device=W.device)
        zero = torch.zeros_like(scale)
    codes = torch.zeros(rows, cols, dtype=torch.uint8, device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()                                              # [out, b]
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = col // gs
            if granularity == "group" and col % gs == 0:
                current = torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :gs]       # updated weights of group g
                scale[:, g], zero[:, g] = affine_params(current, bits, symmetric)
            s, z = scale[:, g], zero[:, g]                                     # [R]
            w = W1[:, i]                                                      # [out]
            c = quantize_codes(w, s, z, bits, symmetric)
            m = keep[:, col]
            c = torch.where(m, c, z.to(torch.uint8).expand_as(c))             # code of exactly 0
            q = dequantize_codes(c, s, z)
            codes[:, col] = c
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return codes, scale, zero, gs


def gptq_layer(linear: nn.Linear, stats: HessianStats, cfg: GPTQConfig) -> QuantLinear:
    if stats.n == 0:
        raise ValueError("GPTQ got no calibration tokens for a layer (all padding?)")
    codes, scale, zero, gs = gptq_quantize(linear.weight, stats.H, bits=cfg.bits, symmetric=cfg.symmetric,
                                           granularity=cfg.granularity, group_size=cfg.group_size,
                                           block_size=cfg.block_size, damp=cfg.damp)
    return QuantLinear.from_codes(codes, bits=cfg.bits, group_size=gs, method="gptq", bias=linear.bias,
                                  scale=scale, zero=zero, symmetric=cfg.symmetric).to(linear.weight.device)


@torch.no_grad()
def quantize_gptq_(model: nn.Module, cfg: GPTQConfig, *, batches=None) -> None:
    """GPTQ every targeted Linear inside the transformer blocks, block by block (needs batches)."""
    batches = check_batches(batches, "gptq")
    layerwise_quantize_(model, batches, cfg.targets, cfg.ignore, HessianStats,
                        lambda fqn, layer, stats: gptq_layer(layer, stats, cfg), sequential=cfg.sequential)


register_method(kind="quantize", name="gptq", config_cls=GPTQConfig, apply_fn=quantize_gptq_,
                description="error-compensated (GPTQ) int4/int8 weights from calibration data")

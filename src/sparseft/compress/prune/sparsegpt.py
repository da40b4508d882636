"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with layer-wise reconstruction.

For each Linear layer with weight W [out, in] and calibration inputs X [n, in], SparseGPT looks for
a sparse W' minimising ||W X^T - W' X^T||^2. With H = 2 X^T X / n (plus dampening), it walks the
input columns left to right in blocks of `block_size`:

  * inside a block, the mask is chosen by the OBS saliency w^2 / [H^-1]_jj^2 (unstructured: the
    block's share of the budget; N:M: per row, the N-M lowest in every group of M columns);
  * each column is pruned and the error it causes, err = (w - w') / [H^-1]_jj, is compensated by
    updating the not-yet-processed columns: W[:, j:] -= err [H^-1]_{j, j:} (the Cholesky factor
    of H^-1 gives these rows directly).

Layers are handled block by block over the transformer (layerwise.py), calibrated on the outputs
of the already pruned blocks. Unlike Wanda it changes the kept weights, so it recovers more of
the dense layer's output; it costs one in x in Cholesky per layer.

    prune_(model, SparseGPTConfig(sparsity=0.5), batches=calib)
    prune_(model, SparseGPTConfig(pattern="2:4"), batches=calib)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparseft.compress.prune.common import (check_sparsity, check_targets, default_ignore, default_targets,
                                            n_pruned, parse_pattern)
from sparseft.compress.prune.layerwise import layerwise_prune_
from sparseft.compress.prune.wanda import check_pattern_sparsity
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method


@dataclass
class SparseGPTConfig(BaseConfig):
    """Args:
        sparsity: fraction set to zero (unstructured); must equal 1 - N/M for an N:M pattern.
        pattern: 'unstructured' or 'N:M' (e.g. '2:4', '4:8').
        block_size: columns processed together (a multiple of M for N:M; 128 in the paper).
        damp: dampening added to H's diagonal, as a fraction of its mean diagonal (0.01 in the paper).
        sequential: inside each transformer block, calibrate the layers group by group in call order
            (q/k/v, then o_proj on the pruned q/k/v's outputs, then gate/up, then down_proj), as
            GPTQ's "true sequential"; False (the paper) calibrates a whole block on its dense inputs.
        targets / ignore: which Linear layers inside the transformer blocks are pruned.
    """

    sparsity: float = 0.5
    pattern: str = "unstructured"
    block_size: int = 128
    damp: float = 0.01
    sequential: bool = False
    targets: list[str] = field(default_factory=default_targets)
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        nm = parse_pattern(self.pattern)
        check_pattern_sparsity(self.pattern, self.sparsity)
        if self.block_size < 1 or (nm is not None and self.block_size % nm[1]):
            raise ValueError(f"block_size must be >= 1 and a multiple of M for N:M patterns, got {self.block_size}")
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"damp must be in (0, 1), got {self.damp}")
        check_targets(self)

    def needs_batches(self) -> bool:
        return True


class Hessian:
    """Running sum of X^T X over calibration tokens: H = 2 * sum / n_tokens ([in, in])."""

    def __init__(self, layer: torch.nn.Linear) -> None:
        self.xtx = torch.zeros(layer.in_features, layer.in_features, dtype=torch.float32,
                               device=layer.weight.device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:  # x: [n_tokens, in]
        self.xtx += x.T @ x
        self.tokens += x.shape[0]

    def matrix(self) -> torch.Tensor:
        return 2.0 * self.xtx / max(1, self.tokens)


def _block_budgets(rows: int, cols: int, block: int, sparsity: float) -> list[int]:
    """Pruned entries per column block, summing exactly to round(sparsity * rows * cols)."""
    widths = [min(block, cols - s) for s in range(0, cols, block)]
    total = n_pruned(rows * cols, sparsity)
    exact = [total * w / cols for w in widths]
    budgets = [int(e) for e in exact]
    for i in sorted(range(len(widths)), key=lambda i: budgets[i] - exact[i])[: total - sum(budgets)]:
        budgets[i] += 1   # largest remainders first
    return budgets


@torch.no_grad()
def sparsegpt_weight(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float,
                     nm: tuple[int, int] | None, block_size: int = 128, damp: float = 0.01) -> torch.Tensor:
    """Return the pruned and compensated weight [out, in] (float32) for a layer with Hessian H."""
    W = weight.detach().float().clone()                      # [out, in]
    H = hessian.clone()                                      # [in, in]
    rows, cols = W.shape
    dead = torch.diag(H) == 0                                # inputs that are always zero
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    # Upper Cholesky factor of H^-1: row j holds the OBS update coefficients for column j.
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    budgets = _block_budgets(rows, cols, block_size, sparsity) if nm is None else []
    for b, i1 in enumerate(range(0, cols, block_size)):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()                             # [out, count]
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]                           # [count, count]
        d = torch.diag(Hinv1)                                # [count]
        mask1 = torch.zeros_like(W1, dtype=torch.bool)       # True = prune
        if nm is None and budgets[b] > 0:
            saliency = (W1 ** 2 / d.unsqueeze(0) ** 2).reshape(-1)
            mask1.view(-1)[torch.topk(saliency.double(), budgets[b], largest=False).indices] = True
        for i in range(count):
            w = W1[:, i]
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                sal = W1[:, i:i + m] ** 2 / d[i:i + m].unsqueeze(0) ** 2          # [out, m]
                idx = torch.topk(sal.double(), m - n, dim=1, largest=False).indices  # [out, m-n]
                mask1.scatter_(1, i + idx, True)
            q = w.clone()
            q[mask1[:, i]] = 0.0
            Q1[:, i] = q
            err = (w - q) / d[i]                             # [out]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]                # compensate the remaining columns
    return W


def prune_sparsegpt_(model: torch.nn.Module, config: SparseGPTConfig, *, batches=None) -> None:
    if not batches:
        raise ValueError("sparsegpt needs calibration batches")
    nm = parse_pattern(config.pattern)

    @torch.no_grad()
    def prune_layer(name: str, layer: torch.nn.Linear, stats: Hessian) -> None:
        if stats.tokens == 0:
            raise ValueError(f"{name} saw no calibration tokens")
        new = sparsegpt_weight(layer.weight, stats.matrix(), sparsity=config.sparsity, nm=nm,
                               block_size=config.block_size, damp=config.damp)
        layer.weight.copy_(new.to(layer.weight.dtype))

    layerwise_prune_(model, batches, config.targets, config.ignore, Hessian, prune_layer,
                     sequential=config.sequential)


register_method(kind="prune", name="sparsegpt", config_cls=SparseGPTConfig, apply_fn=prune_sparsegpt_,
                description="one-shot SparseGPT (OBS reconstruction), unstructured or N:M, layer by layer")

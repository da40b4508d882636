"""The four factorization methods: each a config + a function giving every layer's weighting.

A method decides which matrix is truncated: M = diag(p) @ W @ R, with optional row scales p
[out] and a right factor R (diagonal [in] or lower-triangular [in, in]). The rank-r truncated
SVD of M, U_r S_r V_r^T, is mapped back to the factors

    up   = diag(1/p) @ U_r @ diag(sqrt(S_r))          [out, r]
    down = diag(sqrt(S_r)) @ V_r^T @ R^-1              [r, in]

(the square root of S goes to both factors, which keeps them equally scaled for training and
int8 quantization). The methods:

  svd          plain truncated SVD of W (p = 1, R = I): minimises ||W - W'||_F.
  asvd         ASVD (Yuan et al. 2023): R = diag(mean|x_j|^alpha), input channels scaled by
               their activation magnitude on calibration data, so channels with large
               activations (LLM outliers) keep more of their weights.
  whiten_svd   SVD-LLM (Wang et al. 2024) truncation-aware whitening: R = L with L L^T = X^T X
               (Cholesky of the calibration Gram matrix, float64). Then ||(W - W') X^T||_F equals
               the norm of the truncated singular values of W L: truncation minimises the output
               error on the calibration activations, and the discarded sigma_k^2 *are* that error.
               Singular X^T X (few tokens, dead channels) gets a diagonal offset `damp` x its mean
               diagonal, raised x10 until Cholesky succeeds, up to `max_damp`; beyond that a clear
               error names the layer.
  fisher_svd   FWSVD (Hsu et al. 2022): p_i = sqrt(sum_j F_ij), the row sums of the empirical
               Fisher (squared task-loss gradients over labelled batches), so rows that matter
               for the task are reconstructed more accurately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from sparseft.compress.factorize.calibrate import input_statistics, row_fisher
from sparseft.compress.factorize.config import FactorizeConfig
from sparseft.registry import register_method


@dataclass
class Weighting:
    """p (row scales [out] or None) and R ([in] diagonal, [in, in] lower-triangular, or None)."""

    rows: torch.Tensor | None = None
    right: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


# ---- configs -------------------------------------------------------------------------------


@dataclass
class SVDConfig(FactorizeConfig):
    """Plain truncated SVD (no data). Fields: see FactorizeConfig."""


@dataclass
class ASVDConfig(FactorizeConfig):
    """Activation-aware SVD. Args (plus FactorizeConfig's):
        alpha: exponent of the activation magnitude, R = diag(mean|x|^alpha) (paper: 0.5).
    """

    alpha: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.alpha <= 2.0:
            raise ValueError(f"alpha must be in (0, 2], got {self.alpha}")

    def needs_batches(self) -> bool:
        return True


@dataclass
class WhitenedSVDConfig(FactorizeConfig):
    """SVD-LLM whitened SVD. Args (plus FactorizeConfig's):
        damp: first diagonal offset added to X^T X, as a fraction of its mean diagonal.
        max_damp: largest offset tried (x10 steps) before giving up with an error.
    """

    damp: float = 1e-6
    max_damp: float = 1e-1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.damp <= self.max_damp:
            raise ValueError(f"need 0 < damp <= max_damp, got damp={self.damp}, max_damp={self.max_damp}")

    def needs_batches(self) -> bool:
        return True


@dataclass
class FisherSVDConfig(FactorizeConfig):
    """Fisher-weighted SVD (FWSVD); needs labelled task batches. Fields: see FactorizeConfig."""

    def needs_batches(self) -> bool:
        return True

    def needs_labels(self) -> bool:
        return True


# ---- weightings ----------------------------------------------------------------------------


def _positive(v: torch.Tensor, name: str, what: str) -> torch.Tensor:
    """Scales clamped to >= 1e-6 x their max (a zero scale would make the inverse infinite)."""
    if not torch.isfinite(v).all():
        raise ValueError(f"layer {name}: {what} contains NaN or inf")
    top = float(v.max())
    if top <= 0.0:
        raise ValueError(f"layer {name}: {what} is zero everywhere (the layer never saw a nonzero input or "
                         f"gradient in the calibration data); add it to `ignore` or give other batches")
    return v.clamp_min(top * 1e-6)


def whitening_factor(gram: torch.Tensor, name: str, damp: float, max_damp: float) -> tuple[torch.Tensor, float]:
    """Lower-triangular L with L L^T = X^T X + offset I (float64), and the relative offset used."""
    g = gram.double()
    g = (g + g.T) / 2
    if not torch.isfinite(g).all():
        raise ValueError(f"layer {name}: the calibration Gram matrix X^T X contains NaN or inf")
    scale = float(g.diagonal().mean())
    if not bool(g.any()):
        raise ValueError(f"layer {name}: its calibration inputs are all zero, so X^T X cannot be whitened; "
                         f"add the layer to `ignore` or give other calibration data")
    if scale <= 0.0:
        raise ValueError(f"layer {name}: X^T X is not positive definite (mean diagonal {scale:g} <= 0); "
                         f"it is not a Gram matrix of real inputs")
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    step = 0
    while True:
        rel = float(f"{damp * 10 ** step:.6g}")         # damp, 10 x damp, ... (no float drift in reports)
        chol, info = torch.linalg.cholesky_ex(g + rel * scale * eye)
        if int(info) == 0 and torch.isfinite(chol).all() and float(chol.diagonal().min()) > 0:
            return chol, rel
        if rel * 10 > max_damp * (1 + 1e-9):
            raise ValueError(f"layer {name}: X^T X is not positive definite even with a diagonal offset of "
                             f"{rel:g} x its mean diagonal (float64 Cholesky); raise max_damp, use more "
                             f"calibration tokens, or add the layer to `ignore`")
        step += 1


def svd_weights(model: nn.Module, cfg: SVDConfig, *, layers, batches=None,
                progress: bool = True) -> dict[str, Weighting]:
    return {name: Weighting() for name, _ in layers}


def asvd_weights(model: nn.Module, cfg: ASVDConfig, *, layers, batches=None,
                 progress: bool = True) -> dict[str, Weighting]:
    stats = input_statistics(model, layers, batches, gram=False, absmean=True, progress=progress)
    return {name: Weighting(right=_positive(stats[name].absmean, name, "the mean |activation|") ** cfg.alpha)
            for name, _ in layers}


def whitened_weights(model: nn.Module, cfg: WhitenedSVDConfig, *, layers, batches=None,
                     progress: bool = True) -> dict[str, Weighting]:
    stats = input_statistics(model, layers, batches, gram=True, absmean=False, progress=progress)
    cache: dict[int, Weighting] = {}          # layers sharing an input share one factor
    out = {}
    for name, _ in layers:
        key = id(stats[name])
        if key not in cache:
            chol, rel = whitening_factor(stats[name].gram, name, cfg.damp, cfg.max_damp)
            stats[name].gram = None            # free the Gram matrix as soon as it is factored
            cache[key] = Weighting(right=chol, info={"damp": rel, "calib_tokens": stats[name].tokens})
        out[name] = cache[key]
    return out


def fisher_weights(model: nn.Module, cfg: FisherSVDConfig, *, layers, batches=None,
                   progress: bool = True) -> dict[str, Weighting]:
    fisher = row_fisher(model, layers, batches)
    return {name: Weighting(rows=_positive(fisher[name], name, "the row Fisher information").sqrt())
            for name, _ in layers}


# ---- the weighted matrix and its factors ---------------------------------------------------


def weighted_matrix(weight: torch.Tensor, w: Weighting) -> torch.Tensor:
    """M = diag(p) @ W @ R in float64."""
    m = weight.detach().double()
    if w.rows is not None:
        m = m * w.rows.double().unsqueeze(1)
    if w.right is not None:
        r = w.right.double().to(m.device)
        m = m * r.unsqueeze(0) if r.ndim == 1 else m @ r
    return m


def factors(weight: torch.Tensor, w: Weighting, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, r], down [r, in]) in float64 from the rank-r truncated SVD of M."""
    u, s, vh = torch.linalg.svd(weighted_matrix(weight, w), full_matrices=False)
    root = s[:rank].sqrt()
    up = u[:, :rank] * root.unsqueeze(0)                       # [out, r]
    down = vh[:rank] * root.unsqueeze(1)                       # [r, in]
    if w.rows is not None:
        up = up / w.rows.double().unsqueeze(1)
    if w.right is not None:
        r = w.right.double().to(down.device)
        down = down / r.unsqueeze(0) if r.ndim == 1 else torch.linalg.solve_triangular(r, down, upper=False,
                                                                                        left=False)
    return up, down


register_method(kind="factorize", name="svd", config_cls=SVDConfig, apply_fn=svd_weights,
                description="plain truncated SVD of each weight (no data)")
register_method(kind="factorize", name="asvd", config_cls=ASVDConfig, apply_fn=asvd_weights,
                description="activation-aware SVD: input channels scaled by mean |activation|^alpha")
register_method(kind="factorize", name="whiten_svd", config_cls=WhitenedSVDConfig, apply_fn=whitened_weights,
                description="SVD-LLM truncation-aware whitening (Cholesky of X^T X, float64, adaptive offset)")
register_method(kind="factorize", name="fisher_svd", config_cls=FisherSVDConfig, apply_fn=fisher_weights,
                description="Fisher-weighted SVD (FWSVD): rows weighted by task-gradient Fisher")

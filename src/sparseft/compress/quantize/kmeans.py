"""Non-uniform k-means (codebook) weight quantization, SqueezeLLM-style.

Each output row (or the whole tensor) gets its own `levels`-entry codebook fitted by 1-D
k-means (Lloyd iterations, best of a quantile and an evenly spaced start); a weight is stored as the 4-bit (<= 16
levels) or 8-bit index of its centroid. Precision goes where it matters in two ways:

  * importance weighting (`importance="activation"`, needs calibration batches): the squared
    error of weight w_ij counts with E[x_j^2], the mean square of its input feature, so the
    objective is the layer's output error sum_j E[x_j^2] (w_ij - q_ij)^2 (SqueezeLLM uses the
    Fisher diagonal; this is its data-cheap sibling, the same statistic AWQ and Wanda use);
  * dense-and-sparse outliers (`outlier_fraction`): the largest (importance-scaled) weights of
    each tensor are kept exactly in fp32 and left out of the clustering.

A tensor that already has exact zeros (a pruned model) gets a centroid pinned at 0, so zeros
stay exactly zero. Codebooks are stored in float16 and codes are assigned against the stored
values, so what is exported is exactly what ran.

    >>> quantize_(model, KMeansConfig(levels=16))                                      # doctest: +SKIP
    >>> quantize_(model, KMeansConfig(importance="activation"), batches=calib_batches)   # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from sparseft.compress.quantize.calibrate import ActivationStats, check_batches, layerwise_quantize_
from sparseft.compress.quantize.layers import (QuantLinear, check_targets, default_ignore, set_module,
                                               target_linears)
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method

IMPORTANCE = ("none", "activation")
KMEANS_GRANULARITIES = ("channel", "tensor")


@dataclass
class KMeansConfig(BaseConfig):
    """Args:
        levels: codebook size (2..256; 16 = 4-bit codes).
        granularity: 'channel' (one codebook per output row) or 'tensor' (one per weight).
        iters: maximum Lloyd iterations (stops early when no assignment changes).
        importance: 'none' or 'activation' (weight errors by E[x^2] of the inputs; needs batches).
        outlier_fraction: share of each tensor's weights kept exactly in fp32 (0 disables).
        targets / ignore: which Linear layers.
    """

    levels: int = 16
    granularity: str = "channel"
    iters: int = 100
    importance: str = "none"
    outlier_fraction: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        if not 2 <= self.levels <= 256:
            raise ValueError(f"levels must be in [2, 256], got {self.levels}")
        if self.granularity not in KMEANS_GRANULARITIES:
            raise ValueError(f"granularity must be one of {KMEANS_GRANULARITIES}, got {self.granularity!r}")
        if self.iters < 0:
            raise ValueError(f"iters must be >= 0, got {self.iters}")
        if self.importance not in IMPORTANCE:
            raise ValueError(f"importance must be one of {IMPORTANCE}, got {self.importance!r}")
        if not 0.0 <= self.outlier_fraction < 0.5:
            raise ValueError(f"outlier_fraction must be in [0, 0.5), got {self.outlier_fraction}")
        check_targets(self.targets, self.ignore)

    def needs_batches(self) -> bool:
        return self.importance == "activation"

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(self.levels)))


def _assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid per value (1-D: a bucket search between sorted midpoints).

    values [R, C], centroids [R, L] sorted ascending -> long codes [R, C].
    """
    mids = ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()          # [R, L-1]
    return torch.searchsorted(mids, values.contiguous())


class _SortedRows:
    """Rows sorted once, with prefix sums of w, w*v and w*v^2 ([R, C+1], float64).

    In 1-D every cluster of a Lloyd step is a contiguous run of the sorted values, so the
    cluster sums are differences of prefix sums at the midpoints' positions: one iteration costs
    O(R * L * log C), not O(R * C).
    """

    def __init__(self, values: torch.Tensor, weights: torch.Tensor) -> None:
        self.values, order = values.float().sort(1)                           # [R, C]
        w = weights.gather(1, order).double()
        v = self.values.double()
        zero = torch.zeros(values.shape[0], 1, dtype=torch.float64, device=values.device)
        self.pw, self.pwv, self.pwv2 = (torch.cat([zero, t.cumsum(1)], 1) for t in (w, w * v, w * v * v))

    def cluster_sums(self, cb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sum w, sum w v, sum w v^2) of each centroid's cluster: [R, L] each."""
        cols = self.values.shape[1]
        mids = ((cb[:, 1:] + cb[:, :-1]) / 2).contiguous()                     # [R, L-1]
        cut = torch.searchsorted(self.values, mids)                            # first value >= mid
        idx = torch.cat([torch.zeros_like(cut[:, :1]), cut, torch.full_like(cut[:, :1], cols)], 1)  # [R, L+1]
        return tuple(p.gather(1, idx[:, 1:]) - p.gather(1, idx[:, :-1]) for p in (self.pw, self.pwv, self.pwv2))

    def lloyd(self, init: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted Lloyd iterations from `init` [R, L]: (sorted centroids, per-row error [R])."""
        cb = init.float().sort(-1).values
        for _ in range(iters):
            sw, swv, _ = self.cluster_sums(cb)
            new = torch.where(sw > 0, swv / sw.clamp_min(1e-300), cb.double()).float().sort(-1).values
            if torch.equal(new, cb):
                break
            cb = new
        sw, swv, swv2 = self.cluster_sums(cb)
        c = cb.double()
        return cb, (swv2 - 2 * c * swv + c * c * sw).sum(1)                    # sum w (v - c)^2


def fit_codebook(values: torch.Tensor, weights: torch.Tensor, levels: int, iters: int, pin_zero: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted 1-D k-means per row, best of two initialisations.

    Lloyd's algorithm finds local optima, and which one depends on the start: quantile starts
    do best on bell-shaped rows, evenly spaced starts on flat or short rows (measured on
    Gaussian rows of 384..100k values), so both run and each row keeps the lower error.

    Args:
        values: [R, C] the numbers to cluster.
        weights: [R, C] non-negative importance (0 = ignored, e.g. an outlier).
        pin_zero: reserve one level at exactly 0 (the exact zeros are not clustered).
    Returns:
        (codebook [R, levels] float16 sorted, codes [R, C] uint8) with codes assigned to the
        stored float16 codebook.
    """
    free = levels - 1 if pin_zero else levels
    used = (weights > 0) & (values != 0) if pin_zero else weights > 0
    fit_w = torch.where(used, weights, torch.zeros_like(weights))
    nan_vals = torch.where(used, values, torch.nan).float()
    pos = (torch.arange(free, device=values.device, dtype=torch.float32) + 0.5) / free   # [free]
    lo = torch.nan_to_num(torch.where(used, values, torch.inf).amin(1, keepdim=True), posinf=0.0)
    hi = torch.nan_to_num(torch.where(used, values, -torch.inf).amax(1, keepdim=True), neginf=0.0)
    starts = [torch.nan_to_num(torch.nanquantile(nan_vals, pos, dim=1).T, nan=0.0),   # [R, free]
              lo + (hi - lo) * pos]
    rows = _SortedRows(values, fit_w)
    best, best_err = None, None
    for init in starts:
        cb, err = rows.lloyd(init, iters)
        if best is None:
            best, best_err = cb, err
        else:
            better = (err < best_err)[:, None]
            best, best_err = torch.where(better, cb, best), torch.minimum(err, best_err)
    if pin_zero:
        best = torch.cat([best, torch.zeros_like(best[:, :1])], 1)
    cb16 = best.to(torch.float16).sort(-1).values
    codes = _assign(values, cb16.float())   # exact zeros land on the 0 level
    return cb16, codes.to(torch.uint8)


def kmeans_layer(linear: torch.nn.Linear, cfg: KMeansConfig, importance: torch.Tensor | None = None
                 ) -> QuantLinear:
    """QuantLinear with k-means codebooks for `linear` (importance: [in] E[x^2] or None)."""
    weight = linear.weight.detach().float()                                  # [out, in]
    out, cols = weight.shape
    imp = torch.ones(cols, device=weight.device) if importance is None else importance.float().to(weight.device)
    elem_w = imp.clamp_min(1e-12).expand(out, cols).clone()                  # [out, in]
    outlier_idx = torch.empty(0, dtype=torch.long, device=weight.device)
    if cfg.outlier_fraction > 0:
        k = int(round(cfg.outlier_fraction * weight.numel()))
        if k:
            score = (weight.abs() * elem_w.sqrt()).reshape(-1)
            outlier_idx = torch.topk(score, k).indices.sort().values
            elem_w.view(-1)[outlier_idx] = 0.0
    pin_zero = bool((weight == 0).any())
    shape = (1, -1) if cfg.granularity == "tensor" else (out, cols)
    cb, codes = fit_codebook(weight.reshape(shape), elem_w.reshape(shape), cfg.levels, cfg.iters, pin_zero)
    codes = codes.reshape(out, cols)
    if outlier_idx.numel():
        codes.view(-1)[outlier_idx] = 0  # placeholder code: the exact value comes from outlier_value
    return QuantLinear.from_codes(codes, bits=cfg.bits, group_size=cols, method="kmeans", bias=linear.bias,
                                  codebook=cb, outlier_index=outlier_idx,
                                  outlier_value=weight.reshape(-1)[outlier_idx]).to(linear.weight.device)


@torch.no_grad()
def quantize_kmeans_(model: torch.nn.Module, cfg: KMeansConfig, *, batches=None) -> None:
    """Swap targeted Linear layers for k-means QuantLinear layers (batches: for importance)."""
    if cfg.importance == "none":
        for fqn, linear in target_linears(model, cfg.targets, cfg.ignore):
            set_module(model, fqn, kmeans_layer(linear, cfg))
        return
    batches = check_batches(batches, "kmeans (importance='activation')")
    layerwise_quantize_(model, batches, cfg.targets, cfg.ignore, ActivationStats,
                        lambda fqn, layer, stats: kmeans_layer(layer, cfg, stats.mean()))


register_method(kind="quantize", name="kmeans", config_cls=KMeansConfig, apply_fn=quantize_kmeans_,
                description="non-uniform k-means codebook weights (optionally activation-weighted)")

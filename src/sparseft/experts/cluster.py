"""Balanced k-means: split n neurons into k clusters of exactly n/k (MoEfication's expert construction).

Each iteration assigns greedily under a capacity: all (neuron, centre) pairs are sorted by
distance and taken in that order, a pair being skipped when its neuron is placed or its cluster
full; centres are then the mean of their members. Features are L2-normalised first (cosine
geometry: a neuron's direction, not its scale, decides its group). Deterministic for a seed.

Features used by `moefy_`:
  * "kmeans": the neuron's input weight row(s): W_in[i] (and W_gate[i] for SwiGLU);
  * "coactivation": the neuron's |activation| over calibration tokens: neurons that fire
    together land in one expert, so a token's mass concentrates in few experts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _balanced_assign(dist: torch.Tensor, capacity: int) -> torch.Tensor:
    """Greedy capacity-constrained assignment: dist [n, k] -> labels [n]."""
    n, k = dist.shape
    order = np.argsort(dist.numpy().reshape(-1), kind="stable")
    labels = np.full(n, -1, dtype=np.int64)
    fill = np.zeros(k, dtype=np.int64)
    placed = 0
    for flat in order:
        i, c = divmod(int(flat), k)
        if labels[i] >= 0 or fill[c] >= capacity:
            continue
        labels[i] = c
        fill[c] += 1
        placed += 1
        if placed == n:
            break
    return torch.from_numpy(labels)


def balanced_kmeans(features: torch.Tensor, k: int, *, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Labels [n] in 0..k-1, each used exactly n/k times.

    Args:
        features: [n, d] one row per neuron.
        k: number of clusters (n must be divisible by k).
        iters: most iterations (stops when the assignment no longer changes).
        seed: which neurons seed the centres.
    """
    n = features.shape[0]
    if n % k:
        raise ValueError(f"cannot split {n} neurons into {k} equal experts (num_experts must divide d_ff)")
    x = F.normalize(features.detach().float().cpu(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(n, generator=gen)[:k]].clone()
    labels = None
    for _ in range(iters):
        new = _balanced_assign(torch.cdist(x, centres), n // k)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        centres = torch.zeros(k, x.shape[1]).index_add_(0, labels, x) / (n // k)
    return labels


def expert_neurons(labels: torch.Tensor, k: int) -> torch.Tensor:
    """[k, n/k]: the neuron ids of each cluster, ascending."""
    return torch.stack([(labels == c).nonzero().squeeze(1) for c in range(k)])

"""Rank selection: energy threshold, parameter ratio (global or uniform), explicit ranks.

Input: one `Spectrum` per targeted layer (its shape and the squared singular values of the
method's weighted matrix, descending). Output: a rank per layer, or the reason it stays dense.

Global allocation (ratio mode): every singular value gets the score sigma_k^2 / sum_j sigma_j^2
of its own layer (its share of the layer's energy, so layers of different scale compare), and
all components of all layers are taken in descending score order while the parameter budget
allows. A component of an [out, in] layer costs in + out parameters, except the one that would
reach the break-even point, where the layer becomes dense (cost in * out). A layer whose next
component does not fit stops growing (its kept components stay a prefix of its spectrum). The
result never exceeds the budget, and no further component of any layer fits in what is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Spectrum:
    name: str
    out_features: int
    in_features: int
    sq: torch.Tensor            # [k] float64, squared singular values, descending, k = min(out, in)

    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features

    @property
    def per_rank(self) -> int:
        return self.out_features + self.in_features


def no_gain(rank: int, out_features: int, in_features: int) -> bool:
    """The factorized layer would hold at least as many parameters as the dense one."""
    return rank * (in_features + out_features) >= in_features * out_features


def energy_rank(sq: torch.Tensor, energy: float) -> int:
    """Smallest r with sum(sq[:r]) >= energy * sum(sq) (a zero spectrum gives 1)."""
    total = float(sq.sum())
    if total <= 0.0:
        return 1
    cum = torch.cumsum(sq.double(), 0) / total
    hit = torch.nonzero(cum >= energy - 1e-12)
    return int(hit[0]) + 1 if len(hit) else len(sq)


def uniform_rank(out_features: int, in_features: int, ratio: float) -> int:
    """Largest r with r * (in + out) <= (1 - ratio) * in * out."""
    return int((1.0 - ratio) * in_features * out_features // (in_features + out_features))


def global_ranks(spectra: list[Spectrum], ratio: float, min_rank: int = 1) -> dict[str, int | None]:
    """Ranks (None = dense) within a budget of (1 - ratio) * the layers' dense parameters."""
    budget = int((1.0 - ratio) * sum(s.dense_params for s in spectra))
    ranks = {s.name: min(min_rank, len(s.sq)) for s in spectra}
    dense = {s.name: no_gain(ranks[s.name], s.out_features, s.in_features) for s in spectra}

    def cost(s: Spectrum, r: int, is_dense: bool) -> int:
        return s.dense_params if is_dense else r * s.per_rank

    used = sum(cost(s, ranks[s.name], dense[s.name]) for s in spectra)
    if used > budget:
        raise ValueError(f"ratio={ratio} leaves {budget:,} parameters, fewer than min_rank={min_rank} in every "
                         f"layer needs ({used:,}); lower the ratio or min_rank")
    # every component beyond the starting ranks, scored by its share of its layer's energy
    scores, owners, index = [], [], []
    for i, s in enumerate(spectra):
        total = float(s.sq.sum())
        start = ranks[s.name]
        if total > 0 and len(s.sq) > start and not dense[s.name]:
            scores.append(s.sq[start:].double() / total)
            owners.append(torch.full((len(s.sq) - start,), i, dtype=torch.long))
            index.append(torch.arange(start, len(s.sq)))
    if not scores:
        return {n: (None if dense[n] else r) for n, r in ranks.items()}
    score, owner, idx = torch.cat(scores), torch.cat(owners), torch.cat(index)
    # descending score; ties: layer order, then component order (stable sort on a lexicographic key)
    order = torch.argsort(-score, stable=True)
    closed = [False] * len(spectra)
    for j in order.tolist():
        i = int(owner[j])
        s = spectra[i]
        if closed[i] or dense[s.name]:
            continue
        r = ranks[s.name]
        assert int(idx[j]) == r, "components of one layer must arrive in spectrum order"
        becomes_dense = no_gain(r + 1, s.out_features, s.in_features)
        extra = cost(s, r + 1, becomes_dense) - cost(s, r, False)
        if used + extra <= budget:
            used += extra
            ranks[s.name] = r + 1
            dense[s.name] = becomes_dense
        else:
            closed[i] = True
    return {n: (None if dense[n] else r) for n, r in ranks.items()}


def plan_params(spectra: list[Spectrum], ranks: dict[str, int | None]) -> int:
    """Parameters of the targeted weights under `ranks` (dense layers count in * out)."""
    return sum(s.dense_params if ranks[s.name] is None else ranks[s.name] * s.per_rank for s in spectra)

"""`factorize_(model, config, *, batches=None)`: the one factorization verb, dispatched on the config.

    factorize_(model, SVDConfig(ratio=0.3))                              # 30% fewer targeted params
    factorize_(model, WhitenedSVDConfig(ratio=0.2), batches=calib)       # SVD-LLM
    factorize_(model, FisherSVDConfig(energy=0.9), batches=labelled)     # FWSVD

It is two steps, also callable on their own:

  1. `plan = plan_factorization(model, config, batches=...)` computes (never mutates): every
     targeted layer's weighting (the registered method's function), the singular values of its
     weighted matrix, and the ranks (energy / ratio with global allocation / explicit), applying
     the no-gain rule. `plan.report()` is the per-layer table the recipe stage logs.
  2. `apply_plan_(model, plan)` replaces each factorized nn.Linear by a `FactorizedLinear`.

`batches` are calibration batches as `PadCollator` makes them; asvd and whiten_svd need them,
fisher_svd needs them with labels, svd ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from sparseft.compress.factorize.artifact import record_factorization_
from sparseft.compress.factorize.layer import FactorizedLinear
from sparseft.compress.factorize.methods import Weighting, factors, weighted_matrix
from sparseft.compress.factorize.ranks import (Spectrum, energy_rank, global_ranks, no_gain, plan_params,
                                               uniform_rank)
from sparseft.compress.quantize.layers import set_module, shared_weight_users
from sparseft.config.targets import TargetSpec, matches, select_modules
from sparseft.utils.swaps import record_swaps_
from sparseft.registry import REGISTRY


@dataclass
class LayerPlan:
    name: str
    out_features: int
    in_features: int
    rank: int | None                 # None: stays dense
    reason: str = ""                 # why it stays dense: "no_gain" or "not_listed"
    kept_energy: float = 1.0         # share of the weighted matrix's energy the rank keeps

    @property
    def params(self) -> int:
        return self.out_features * self.in_features if self.rank is None else \
            self.rank * (self.in_features + self.out_features)


@dataclass
class FactorizationPlan:
    method: str
    config: object
    layers: list[LayerPlan]
    weightings: dict[str, Weighting] = field(repr=False, default_factory=dict)

    def report(self) -> dict:
        """Scalars for the report table plus per-layer lists (for metrics.json and plots)."""
        before = sum(lp.out_features * lp.in_features for lp in self.layers)
        after = sum(lp.params for lp in self.layers)
        damps = {n: w.info["damp"] for n, w in self.weightings.items() if "damp" in w.info}
        out = {"factorizer": self.method, "targeted_layers": len(self.layers),
               "factorized_layers": sum(lp.rank is not None for lp in self.layers),
               "dense_layers": {lp.name: lp.reason for lp in self.layers if lp.rank is None},
               "targeted_params_before": before, "targeted_params_after": after,
               "param_reduction": 1.0 - after / before if before else 0.0,
               "per_layer_rank": [[lp.name, lp.rank] for lp in self.layers],
               "per_layer_param_ratio": [[lp.name, lp.params / (lp.out_features * lp.in_features)]
                                         for lp in self.layers],
               "per_layer_kept_energy": [[lp.name, lp.kept_energy] for lp in self.layers]}
        for key in ("ratio", "energy"):
            if getattr(self.config, key, None) is not None:
                out[f"target_{key}"] = getattr(self.config, key)
        if damps:
            out["max_whitening_damp"] = max(damps.values())
        return out


def factorizable_linears(model: nn.Module, targets: list[str], ignore: list[str]) -> list[tuple[str, nn.Linear]]:
    """[(fqn, nn.Linear)] selected by targets/ignore, skipping the factors of FactorizedLinear layers."""
    inside = {f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, FactorizedLinear) for c in ("up", "down")}
    chosen = select_modules(model, TargetSpec(targets=targets, ignore=ignore),
                            filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn not in inside)
    for fqn, layer in chosen:
        users = shared_weight_users(model, layer.weight)
        if len(users) > 1:
            raise ValueError(f"{fqn}.weight is tied to {users}; factorizing it would untie them: add it to `ignore`")
    return chosen


def _ranks(cfg, layers, spectra: list[Spectrum]) -> tuple[dict[str, int | None], dict[str, str]]:
    modules = dict(layers)
    reasons: dict[str, str] = {}
    if cfg.ranks:
        ranks = {}
        for s in spectra:
            hit = next((r for p, r in cfg.ranks.items() if matches(p, s.name, modules[s.name])), None)
            ranks[s.name] = None if hit is None else min(hit, len(s.sq))
            if hit is None:
                reasons[s.name] = "not_listed"
        unused = [p for p in cfg.ranks if not any(matches(p, n, m) for n, m in layers)]
        if unused:
            raise ValueError(f"ranks patterns {unused} match no targeted layer")
    elif cfg.energy is not None:
        ranks = {s.name: max(cfg.min_rank, energy_rank(s.sq, cfg.energy)) for s in spectra}
    elif cfg.allocation == "uniform":
        ranks = {s.name: max(cfg.min_rank, uniform_rank(s.out_features, s.in_features, cfg.ratio)) for s in spectra}
    else:
        ranks = global_ranks(spectra, cfg.ratio, cfg.min_rank)
    for s in spectra:   # the no-gain rule, whatever chose the rank
        r = ranks[s.name]
        if s.name not in reasons and (r is None or no_gain(r, s.out_features, s.in_features)):
            ranks[s.name] = None
            reasons[s.name] = "no_gain"
    return ranks, reasons


@torch.no_grad()
def plan_factorization(model: nn.Module, config, *, batches: Iterable[dict] | None = None,
                       progress: bool = True) -> FactorizationPlan:
    """Weightings, spectra and ranks of every targeted layer; the model is not changed."""
    method = REGISTRY.for_config(config)
    if method.kind != "factorize":
        raise TypeError(f"{type(config).__name__} configures a {method.kind} method, not a factorization method")
    batches = list(batches) if batches is not None else None
    if config.needs_batches() and not batches:
        raise ValueError(f"factorization method {method.name!r} needs calibration batches (batches=[...]); "
                         f"in a recipe set calib_samples > 0 and give training data")
    layers = factorizable_linears(model, config.targets, config.ignore)
    if config.needs_labels():
        with torch.enable_grad():
            weightings = method.apply_fn(model, config, layers=layers, batches=batches, progress=progress)
    else:
        weightings = method.apply_fn(model, config, layers=layers, batches=batches, progress=progress)
    spectra = []
    for name, layer in tqdm(layers, desc="spectra", disable=not progress, leave=False):
        sv = torch.linalg.svdvals(weighted_matrix(layer.weight, weightings[name]))
        spectra.append(Spectrum(name, layer.out_features, layer.in_features, sv * sv))
    ranks, reasons = _ranks(config, layers, spectra)
    plans = []
    for s in spectra:
        r = ranks[s.name]
        total = float(s.sq.sum())
        kept = float(s.sq[:r].sum()) / total if r is not None and total > 0 else 1.0
        plans.append(LayerPlan(s.name, s.out_features, s.in_features, r, reasons.get(s.name, ""), kept))
    assert plan_params(spectra, ranks) == sum(p.params for p in plans)
    return FactorizationPlan(method.name, config, plans, weightings)


@torch.no_grad()
def apply_plan_(model: nn.Module, plan: FactorizationPlan, *, progress: bool = True) -> None:
    """Swap every planned layer for a FactorizedLinear with the planned rank."""
    for lp in tqdm([p for p in plan.layers if p.rank is not None], desc="factorize", disable=not progress,
                   leave=False):
        layer = model.get_submodule(lp.name)
        up, down = factors(layer.weight, plan.weightings[lp.name], lp.rank)
        set_module(model, lp.name, FactorizedLinear.from_factors(up, down, layer.bias, like=layer))
    record_factorization_(model, plan.method, plan.config)
    record_swaps_(model)       # config.json's quantization_config: from_pretrained rebuilds the layers


def factorize_(model: nn.Module, config, *, batches: Iterable[dict] | None = None, progress: bool = True) -> None:
    """Factorize `model`'s targeted Linear layers in place with the method registered for `type(config)`.

    Args:
        model: a transformers model (or any module with nn.Linear layers).
        config: SVDConfig, ASVDConfig, WhitenedSVDConfig or FisherSVDConfig (rank by ratio / energy / ranks).
        batches: calibration batches (asvd, whiten_svd), with labels for fisher_svd.

    Example:
        >>> from sparseft.compress.factorize import WhitenedSVDConfig
        >>> factorize_(model, WhitenedSVDConfig(ratio=0.2), batches=calib)   # doctest: +SKIP
    """
    apply_plan_(model, plan_factorization(model, config, batches=batches, progress=progress), progress=progress)

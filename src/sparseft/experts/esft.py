"""Expert-specialized fine-tuning (ESFT, Wang et al., 2024): tune only the experts a task uses.

    plan = esft_(model, ESFTConfig(threshold=0.5), batches)      # score, select, freeze, mask
    train(model, data.train, train_cfg, collate_fn=..., param_groups=plan.param_groups(0.01))
    plan.remove()                                                # drop the gradient masks

On an MoE model from `sparseft.experts` (MoEfied or upcycled: `ExpertFFN` layers):
  1. score: run the task's batches (eval mode, no gradients) and, per layer, measure each
     expert's share of the routing on real (non-padding) tokens: 'token' = share of the
     token -> expert assignments (ESFT's token selection ratio), 'gate' = share of the routing
     weight (upcycled: the renormalised softmax gates; MoEfied: the router's / oracle's mass).
     The layers' counters and aux losses are restored afterwards (scoring is not traffic);
  2. select per layer the fewest experts, highest share first, whose cumulative share reaches
     `threshold` (within [min_experts, max_experts]);
  3. freeze every parameter, then make the expert stacks (w_in, w_gate, b_in, w_out: [E, ...])
     of each layer trainable with a per-expert gradient mask (a tensor hook that zeroes the
     gradient of unselected experts' rows); routers stay frozen unless
     `train_router`, the shared b_out always; `heads` (new task heads) train densely.

Unselected experts stay bit-identical through AdamW: their gradient is exactly 0, so both Adam
moments stay 0 and the step adds -0.0; `param_groups` puts the expert stacks in a group with
weight_decay 0 (decoupled decay would otherwise shrink the frozen rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from sparseft.config.targets import TargetSpec, select_modules
from sparseft.experts.layer import expert_layers
from sparseft.experts.task_config import ESFTConfig

EXPERT_PARAMS = ("w_in", "w_gate", "b_in", "w_out")


def _tokens_mask(batch: dict, n: int) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    if mask is None or mask.numel() != n:
        return None
    return mask.reshape(-1).bool()


@torch.no_grad()
def expert_shares(model: nn.Module, batches: Iterable[dict], score: str = "token") -> dict[str, torch.Tensor]:
    """{layer fqn: [E] share of the layer's routing on the batches' real tokens} (sums to 1)."""
    layers = expert_layers(model)
    if not layers:
        raise ValueError("ESFT needs an MoE model: no ExpertFFN layer (moefy_ or upcycle_ it first)")
    totals = {n: torch.zeros(m.num_experts, dtype=torch.float64) for n, m in layers}
    saved = {n: (m.counters(), m.aux_loss) for n, m in layers}
    inputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, _n=n: inputs.__setitem__(_n, args[0]))
               for n, m in layers]
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            inputs.clear()
            model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
            for n, m in layers:
                x = inputs[n].reshape(-1, inputs[n].shape[-1])
                keep = _tokens_mask(batch, x.shape[0])
                if keep is not None:
                    x = x[keep.to(x.device)]
                chosen, weights = m.route(x)
                if score == "token":
                    share = chosen.float()
                elif weights is not None:
                    share = weights.float()
                else:           # sum combine: the router's / oracle's mass on the chosen experts
                    mass = (m.oracle_mass(x) if m.oracle or m.router is None else m.router(x)).float().clamp_min(0)
                    share = mass * chosen / mass.sum(-1, keepdim=True).clamp_min(1e-12)
                totals[n] += share.sum(0).double().cpu()
    finally:
        for h in handles:
            h.remove()
        for n, m in layers:
            counts, aux = saved[n]
            for key, value in counts.items():
                setattr(m, key, value)
            m.aux_loss = aux
        model.train(was)
    return {n: (t / t.sum().clamp_min(1e-12)).float() for n, t in totals.items()}


def select_by_share(shares: dict[str, torch.Tensor], cfg: ESFTConfig) -> dict[str, list[int]]:
    """{layer: sorted expert ids}: fewest experts, highest share first, reaching cfg.threshold."""
    out = {}
    for name, share in shares.items():
        order = torch.argsort(share, descending=True, stable=True)
        cum = torch.cumsum(share[order], 0)
        k = int((cum < cfg.threshold - 1e-9).sum()) + 1          # the first prefix reaching it
        k = max(cfg.min_experts, min(k, len(order)))
        if cfg.max_experts:
            k = min(k, cfg.max_experts)
        out[name] = sorted(int(e) for e in order[:k])
    return out


@dataclass
class ESFTPlan:
    """What `esft_` chose and set up. `param_groups(wd)` for the optimizer, `remove()` afterwards."""

    selected: dict[str, list[int]]
    shares: dict[str, list[float]]
    expert_params: list[nn.Parameter] = field(default_factory=list, repr=False)
    other_params: list[nn.Parameter] = field(default_factory=list, repr=False)
    handles: list = field(default_factory=list, repr=False)

    def param_groups(self, weight_decay: float = 0.0) -> list[dict]:
        """Expert stacks with weight_decay 0 (unselected rows must not decay), heads/routers decayed."""
        groups = [{"params": self.expert_params, "weight_decay": 0.0},
                  {"params": self.other_params, "weight_decay": weight_decay}]
        return [g for g in groups if g["params"]]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def summary(self) -> dict:
        total = sum(len(s) for s in self.shares.values())
        chosen = sum(len(s) for s in self.selected.values())
        return {"layers": len(self.selected), "experts": total, "selected_experts": chosen,
                "selected_share": chosen / max(1, total),
                "trainable_params": sum(_masked_count(p) for p in self.expert_params)
                + sum(p.numel() for p in self.other_params),
                "selected": self.selected, "shares": self.shares}


def _masked_count(p: nn.Parameter) -> int:
    mask = getattr(p, "_esft_mask", None)
    return p.numel() if mask is None else int(mask.sum()) * (p.numel() // p.shape[0])


def esft_(model: nn.Module, cfg: ESFTConfig, batches: Sequence[dict], *,
          heads: Sequence[str] = ()) -> ESFTPlan:
    """Score, select and freeze in place for ESFT (see module docstring); returns the ESFTPlan.

    Args:
        model: an MoE model (ExpertFFN layers).
        cfg: ESFTConfig (threshold, score, bounds, train_router, score_batches).
        batches: the task's collated batches (the first cfg.score_batches are scored).
        heads: module patterns trained densely as well (a new task head: ['classifier']).

    Example:
        >>> plan = esft_(model, ESFTConfig(threshold=0.5), calib_batches)          # doctest: +SKIP
    """
    batches = list(batches)[:cfg.score_batches]
    if not batches:
        raise ValueError("esft_ needs task batches to score the experts (batches=[...])")
    shares = expert_shares(model, batches, cfg.score)
    selected = select_by_share(shares, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    plan = ESFTPlan(selected, {n: [round(float(v), 6) for v in s] for n, s in shares.items()})
    for name, layer in expert_layers(model):
        mask = torch.zeros(layer.num_experts, dtype=torch.bool)
        mask[selected[name]] = True
        for pname in EXPERT_PARAMS:
            p = getattr(layer, pname)
            if p is None:
                continue
            frozen = (~mask).to(p.device).view(-1, *([1] * (p.ndim - 1)))      # [E, 1(, 1)]
            p.requires_grad_(True)
            p._esft_mask = mask
            plan.handles.append(p.register_hook(lambda g, _f=frozen: g.masked_fill(_f, 0)))
            plan.expert_params.append(p)
        if cfg.train_router and layer.router is not None:
            for p in layer.router.parameters():
                p.requires_grad_(True)
                plan.other_params.append(p)
    if heads:
        for _, module in select_modules(model, TargetSpec(list(heads)), require_match=False):
            for p in module.parameters():
                if not p.requires_grad:
                    p.requires_grad_(True)
                    plan.other_params.append(p)
    return plan


"""Sparse upcycling: each dense FFN becomes E identical experts plus a fresh top-k softmax router.

    upcycle_(model, UpcycleConfig(num_experts=4, top_k=2))
    aux = AuxLoss(coef=0.01)
    train(model, data, cfg, collate_fn=..., loss_fn=aux.wrap(default_loss), post_step=[aux.post_step])
    aux.history   # [{"step", "aux_loss"}]: the load-balancing loss, logged per optimizer step

The router (Linear H -> E, normal init) gives probabilities; each token keeps its top-k, whose
weights are renormalised to sum to one (Mixtral). At initialisation every expert is a copy of
the dense FFN, so the output is the dense output times sum(weights) = 1: the upcycled model
computes the dense model's function. Training then lets the experts diverge; the Switch /
Mixtral load-balancing loss E/k * sum_e f_e P_e (1.0 when balanced) keeps the router from
collapsing onto a few experts. The loop needs no change: `AuxLoss.wrap` adds the loss through
the loop's `loss_fn` argument and `AuxLoss.post_step` records it through `post_step`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from sparseft.experts.config import UpcycleConfig
from sparseft.experts.layer import ExpertFFN, ExpertOutputPassThrough, collect_aux_loss
from sparseft.experts.sites import find_sites, set_module
from sparseft.registry import register_method
from sparseft.utils.io import atomic_write_text


@torch.no_grad()
def apply_upcycle(model: nn.Module, cfg: UpcycleConfig, *, batches: list[dict] | None = None) -> dict:
    """Registered apply function of 'upcycle' (call `upcycle_`); returns a summary dict."""
    sites = find_sites(model, cfg.targets, cfg.ignore)
    gen = torch.Generator().manual_seed(cfg.seed)
    e = cfg.num_experts
    for site in sites:
        like = site.w_in
        layer = ExpertFFN(site.hidden_size, e, site.d_ff, gated=site.kind == "gated", activation_name=site.activation,
                          bias=site.b_in is not None, combine="softmax", top_k=cfg.top_k, oracle=False,
                          router={"kind": "softmax"}, dtype=like.dtype, device=like.device)
        layer.w_in.copy_(site.w_in.unsqueeze(0).expand(e, -1, -1))
        layer.w_out.copy_(site.w_out.T.unsqueeze(0).expand(e, -1, -1))
        if layer.w_gate is not None:
            layer.w_gate.copy_(site.w_gate.unsqueeze(0).expand(e, -1, -1))
        if layer.b_in is not None:
            layer.b_in.copy_(site.b_in.unsqueeze(0).expand(e, -1))
        if layer.b_out is not None and site.b_out is not None:
            layer.b_out.copy_(site.b_out)
        layer.neurons.copy_(torch.arange(site.d_ff).unsqueeze(0).expand(e, -1))
        gate = layer.router.gate.weight
        gate.copy_(torch.randn(gate.shape, generator=gen).to(gate.dtype) * cfg.router_init_std)
        for p in layer.parameters():
            p.requires_grad_(True)
        set_module(model, site.fqn, layer)
        if site.out_fqn is not None:
            set_module(model, site.out_fqn, ExpertOutputPassThrough())
    return {"blocks": len(sites), "num_experts": e, "expert_size": sites[0].d_ff, "top_k": cfg.top_k}


class AuxLoss:
    """Adds `coef` x the layers' load-balancing losses to the training loss, and logs them.

    `wrap(loss_fn)` gives the loop's loss_fn; `post_step` (a loop post_step hook) records the mean
    auxiliary loss of the micro-batches since the last optimizer step into `history` and, with
    `log_path`, rewrites that JSONL file (atomically) so a running job shows it.
    """

    def __init__(self, coef: float = 0.01, *, log_path: str | Path | None = None) -> None:
        if coef < 0:
            raise ValueError(f"coef must be >= 0, got {coef}")
        self.coef = coef
        self.log_path = Path(log_path) if log_path is not None else None
        self.history: list[dict] = []
        self._pending: list[float] = []

    def wrap(self, loss_fn):
        def loss_with_aux(model: nn.Module, batch: dict) -> torch.Tensor:
            loss = loss_fn(model, batch)
            aux = collect_aux_loss(model)
            if aux is None:
                raise ValueError("AuxLoss: the model's forward left no auxiliary loss (no upcycled ExpertFFN "
                                 "layer in training mode)")
            self._pending.append(float(aux.detach()))
            return loss + self.coef * aux.to(loss.dtype)
        return loss_with_aux

    def post_step(self, model: nn.Module, step: int) -> None:
        if not self._pending:
            return
        self.history.append({"step": step, "aux_loss": sum(self._pending) / len(self._pending),
                             "aux_weight": self.coef})
        self._pending = []
        if self.log_path is not None:
            atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in self.history))


register_method(kind="experts", name="upcycle", config_cls=UpcycleConfig, apply_fn=apply_upcycle,
                description="sparse upcycling: copy dense FFNs into E experts with a top-k softmax router")

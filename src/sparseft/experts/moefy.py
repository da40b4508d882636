"""MoEfication: split each dense FFN into E equal experts (no new weights) and route tokens to a few.

    moefy_(model, MoEfyConfig(num_experts=16, top_k=4))                          # k-means, oracle router
    moefy_(model, MoEfyConfig(num_experts=16, top_k=4, router="mlp"), batches=calib)   # learned router

Steps per FFN block (experts/sites.py finds them): group the d_ff neurons into E clusters of
d_ff/E by balanced k-means (experts/cluster.py) on their weight rows or on their co-activation
over calibration tokens; copy the rows/columns of each group into one `ExpertFFN` slice
(experts/layer.py); with router='mlp', train a small MLP per block on the blocks' dense inputs
to predict each expert's share of the activation mass (`train_router`). Calibration inputs are
those of the dense model (captured once, before any block is swapped).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sparseft.experts.cluster import balanced_kmeans, expert_neurons
from sparseft.experts.config import MoEfyConfig
from sparseft.experts.layer import ExpertFFN, ExpertOutputPassThrough, expert_layers
from sparseft.experts.router import MLPRouter, select_experts
from sparseft.experts.sites import FFNSite, capture_inputs, find_sites, set_module
from sparseft.registry import register_method


@torch.no_grad()
def _dense_hidden(site: FFNSite, x: torch.Tensor) -> torch.Tensor:
    """The dense block's activations h [N, d_ff] on inputs x [N, H]."""
    from sparseft.experts.layer import activation

    act = activation(site.activation)
    up = nn.functional.linear(x, site.w_in, site.b_in)
    return act(nn.functional.linear(x, site.w_gate)) * up if site.w_gate is not None else act(up)


def _features(site: FFNSite, cfg: MoEfyConfig, x: torch.Tensor | None) -> torch.Tensor:
    """[d_ff, d] one feature row per neuron (see experts/cluster.py)."""
    if cfg.clustering == "coactivation":
        return _dense_hidden(site, x).abs().T
    w = site.w_in.detach()
    return torch.cat([w, site.w_gate.detach()], dim=1) if site.w_gate is not None else w


@torch.no_grad()
def build_expert_layer(site: FFNSite, neurons: torch.Tensor, *, top_k: int, threshold: float = 0.0,
                       router: dict | None = None) -> ExpertFFN:
    """An ExpertFFN whose expert e holds the dense block's neurons `neurons[e]` ([E, m] ids)."""
    e, m = neurons.shape
    like = site.w_in
    layer = ExpertFFN(site.hidden_size, e, m, gated=site.kind == "gated", activation_name=site.activation,
                      bias=site.b_in is not None, top_k=top_k, threshold=threshold,
                      oracle=router is None, router=router, dtype=like.dtype, device=like.device)
    flat = neurons.reshape(-1).to(like.device)
    layer.w_in.copy_(site.w_in.index_select(0, flat).reshape(e, m, -1))
    layer.w_out.copy_(site.w_out.T.index_select(0, flat).reshape(e, m, -1))
    if layer.w_gate is not None:
        layer.w_gate.copy_(site.w_gate.index_select(0, flat).reshape(e, m, -1))
    if layer.b_in is not None:
        layer.b_in.copy_(site.b_in.index_select(0, flat).reshape(e, m))
    if layer.b_out is not None and site.b_out is not None:
        layer.b_out.copy_(site.b_out)
    layer.neurons.copy_(neurons)
    trainable = like.requires_grad
    for p in layer.parameters():
        p.requires_grad_(trainable)
    return layer


def apply_moefy(model: nn.Module, cfg: MoEfyConfig, *, batches: list[dict] | None = None) -> dict:
    """Registered apply function of 'moefy' (call `moefy_`); returns a summary dict."""
    sites = find_sites(model, cfg.targets, cfg.ignore)
    for site in sites:
        if site.d_ff % cfg.num_experts:
            raise ValueError(f"num_experts={cfg.num_experts} does not divide d_ff={site.d_ff} of {site.fqn}")
    inputs = capture_inputs(model, [s.fqn for s in sites], batches, cfg.calib_tokens) if cfg.needs_batches() else {}
    router = {"kind": "mlp", "hidden": cfg.router_hidden} if cfg.router == "mlp" else None
    for i, site in enumerate(sites):
        labels = balanced_kmeans(_features(site, cfg, inputs.get(site.fqn)), cfg.num_experts,
                                 iters=cfg.kmeans_iters, seed=cfg.seed + i)
        layer = build_expert_layer(site, expert_neurons(labels, cfg.num_experts), top_k=cfg.top_k,
                                   threshold=cfg.threshold, router=router)
        if layer.router is not None:
            torch.manual_seed(cfg.seed + i)
            layer.router.net.apply(_reset)
        set_module(model, site.fqn, layer)
        if site.out_fqn is not None:
            set_module(model, site.out_fqn, ExpertOutputPassThrough())
    summary = {"blocks": len(sites), "num_experts": cfg.num_experts, "expert_size": sites[0].d_ff // cfg.num_experts}
    if cfg.router == "mlp":
        summary["router"] = fit_routers(model, inputs, steps=cfg.router_steps, lr=cfg.router_lr,
                                        batch_tokens=cfg.router_batch_tokens, seed=cfg.seed)
    return summary


def _reset(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.reset_parameters()


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicted shares against target shares, minus the target entropy (= KL >= 0)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(target * target.clamp_min(1e-12).log()).sum(-1)
    return (-(target * logp).sum(-1) - ent).mean()


def fit_routers(model: nn.Module, inputs: dict[str, torch.Tensor], *, steps: int = 300, lr: float = 1e-3,
                batch_tokens: int = 512, seed: int = 0) -> dict:
    """Train each MoEfied block's MLPRouter on its captured dense inputs x [N, H] (`inputs[fqn]`).

    Target: the expert mass shares of the oracle (sum |h| per expert, normalised per token).
    Loss: KL(target || predicted), Adam, `steps` minibatches of `batch_tokens` tokens.
    Returns {"loss_before", "loss_after", "recall_at_k", "layers": {fqn: {...}}} (means over
    blocks; recall_at_k: share of the oracle's top-k experts the router also picks, on the
    calibration tokens).
    """
    out = {}
    gen = torch.Generator().manual_seed(seed)
    for fqn, layer in expert_layers(model):
        router = layer.router
        if not isinstance(router, MLPRouter):
            continue
        if fqn not in inputs:
            raise ValueError(f"no calibration inputs for {fqn}")
        x = inputs[fqn].to(layer.w_in.dtype)
        with torch.no_grad():
            mass = layer.oracle_mass(x)
            target = mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)
        was = [p.requires_grad for p in router.parameters()]
        for p in router.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(router.parameters(), lr=lr)
        with torch.no_grad():
            before = float(_soft_ce(router.logits(x), target))
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (min(batch_tokens, x.shape[0]),), generator=gen)
            loss = _soft_ce(router.logits(x[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for p, w in zip(router.parameters(), was):
            p.requires_grad_(w)
        with torch.no_grad():
            pred = router(x)
            after = float(_soft_ce(router.logits(x), target))
            k = layer.top_k
            hit = select_experts(pred, k) & select_experts(mass, k)
            recall = float(hit.sum()) / (x.shape[0] * k)
        out[fqn] = {"loss_before": before, "loss_after": after, "recall_at_k": recall, "tokens": x.shape[0]}
    if not out:
        raise ValueError("the model has no MoEfied block with an MLP router (moefy with router='mlp')")
    mean = {key: sum(v[key] for v in out.values()) / len(out) for key in ("loss_before", "loss_after", "recall_at_k")}
    return {**mean, "layers": out}


def train_router(model: nn.Module, batches: list[dict], *, steps: int = 300, lr: float = 1e-3,
                 batch_tokens: int = 512, calib_tokens: int = 8192, seed: int = 0) -> dict:
    """(Re)train the MLP routers of a MoEfied model on calibration batches; returns `fit_routers`' summary.

    The blocks' inputs are captured with every expert active (the dense computation), so the
    routers learn from the hidden states of the dense model, as at `moefy_` time.

    Example:
        >>> stats = train_router(model, calib, steps=500)      # doctest: +SKIP
        >>> stats["loss_before"] > stats["loss_after"]          # doctest: +SKIP
        True
    """
    layers = expert_layers(model)
    if not layers:
        raise ValueError("the model has no ExpertFFN blocks: run moefy_ first")
    for _, layer in layers:
        layer.route_all = True
    try:
        inputs = capture_inputs(model, [f for f, _ in layers], batches, calib_tokens)
    finally:
        for _, layer in layers:
            layer.route_all = False
    return fit_routers(model, inputs, steps=steps, lr=lr, batch_tokens=batch_tokens, seed=seed)


register_method(kind="experts", name="moefy", config_cls=MoEfyConfig, apply_fn=apply_moefy,
                description="MoEfication: split dense FFNs into routed experts (balanced k-means / co-activation)")

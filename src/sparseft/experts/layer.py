"""`ExpertFFN`: a transformer FFN held as E dense expert slices, with real compute skipping.

    w_in   [E, m, H]   rows of the up-projection (BERT intermediate.dense / Llama up_proj)
    w_gate [E, m, H]   rows of gate_proj (SwiGLU models only)
    b_in   [E, m]      the up-projection bias (BERT)
    w_out  [E, m, H]   the down-projection's columns, transposed (BERT output.dense / down_proj)
    b_out  [H]         the down-projection bias (BERT)
    neurons [E, m]     which original d_ff neuron each row is (MoEfication keeps them all once)

Forward on x [..., H] (N tokens): score the experts (router or oracle), choose each token's
experts (`router.select_experts`), then for every expert that any token chose: gather its tokens
(`index_select`), run only that expert's slices, scatter-add the result (`index_add_`). Experts no
token chose cost nothing. With every expert chosen, the result is the dense FFN's (up to float
summation order). Two combine rules:
  * "sum" (MoEfication): chosen experts' outputs are added - a partition of the dense neurons;
  * "softmax" (upcycling): outputs weighted by the renormalised top-k router probabilities;
    in training mode the layer keeps `aux_loss` (load balancing) for the loss to collect.

Counters (`counters()`, `reset_counters()`): forwards, tokens, expert calls, token->expert
assignments, and multiply-add FLOPs of the experts, of the router, and of the dense FFN on the
same tokens - what tests and benchmarks read to confirm that skipping really skips.

Saving follows the swapped-module protocol (utils/swaps.py): `swap_spec()` records the layout;
`from_swap_spec` rebuilds an empty layer that `from_pretrained` fills. On BERT the layer replaces
`intermediate` and returns the FFN output; `output.dense` becomes an `ExpertOutputPassThrough`
(dropout, residual and LayerNorm stay in `BertOutput`, outside the experts).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparseft.experts.router import build_router, load_balancing_loss, select_experts

COMBINES = ("sum", "softmax")
GUARD_KEYS = {True: ("down_proj.weight",), False: ("dense.weight",)}   # gated / BERT: a dense block's own tensor


def _add_block_guards(module, state_dict, prefix, local_metadata) -> None:
    """Empty tensors under the replaced block's own weight names (`mlp.down_proj.weight`,
    `intermediate.dense.weight`): plain transformers then stops with a size mismatch instead of
    initialising the FFN at random; skipped on a meta skeleton (from_pretrained listing tensors)."""
    if any(p.is_meta for p in module.parameters()):
        return
    for key in module.save_guards:
        state_dict[prefix + key] = torch.empty(0, dtype=torch.uint8)


def _drop_block_guards(module, state_dict, prefix, *args) -> None:
    for key in module.save_guards:
        t = state_dict.get(prefix + key)
        if t is not None and t.numel() == 0:
            del state_dict[prefix + key]
_COUNTERS = ("forwards", "tokens", "expert_calls", "assignments", "expert_flops", "router_flops", "dense_flops")


def activation(name: str) -> nn.Module:
    """The transformers activation module for a config's `hidden_act` string."""
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(ACT2FN)}")
    return ACT2FN[name]


class ExpertFFN(nn.Module):
    """E experts of `expert_size` neurons each over hidden size H (see module docstring)."""

    def __init__(self, hidden_size: int, num_experts: int, expert_size: int, *, gated: bool, activation_name: str,
                 bias: bool, combine: str = "sum", top_k: int = 1, threshold: float = 0.0, oracle: bool = True,
                 router: dict | None = None, dtype=None, device=None) -> None:
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
        self.hidden_size, self.num_experts, self.expert_size = hidden_size, num_experts, expert_size
        self.gated, self.activation_name, self.combine = gated, activation_name, combine
        self.top_k, self.threshold, self.oracle = top_k, threshold, oracle
        self.act = activation(activation_name)
        kw = {"dtype": dtype, "device": device}
        shape = (num_experts, expert_size, hidden_size)
        self.w_in = nn.Parameter(torch.empty(shape, **kw))
        self.w_gate = nn.Parameter(torch.empty(shape, **kw)) if gated else None
        self.w_out = nn.Parameter(torch.empty(shape, **kw))
        self.b_in = nn.Parameter(torch.zeros(num_experts, expert_size, **kw)) if bias else None
        self.b_out = nn.Parameter(torch.zeros(hidden_size, **kw)) if bias else None
        self.register_buffer("neurons", torch.zeros(num_experts, expert_size, dtype=torch.long, device=device))
        self.router = build_router(router, hidden_size, num_experts, dtype=dtype)
        self.aux_loss: torch.Tensor | None = None
        self.route_all = False        # calibration: every expert for every token (the dense FFN)
        self.save_guards = GUARD_KEYS[gated]
        self.register_state_dict_post_hook(_add_block_guards)
        self.register_load_state_dict_pre_hook(_drop_block_guards)
        self.reset_counters()

    # ---- bookkeeping ---------------------------------------------------------------------
    def reset_counters(self) -> None:
        for name in _COUNTERS:
            setattr(self, name, 0)

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _COUNTERS}

    def _mults(self) -> int:
        return 3 if self.gated else 2          # matmuls per neuron: (gate,) up, down

    # ---- the computation ---------------------------------------------------------------------
    def expert_hidden(self, x: torch.Tensor, e: int | slice) -> torch.Tensor:
        """act(x W_in[e]^T + b_in[e]) (times x W_gate[e]^T's activation for SwiGLU): [n, m]."""
        up = F.linear(x, self.w_in[e], None if self.b_in is None else self.b_in[e])
        if self.gated:
            return self.act(F.linear(x, self.w_gate[e])) * up
        return self.act(up)

    def oracle_mass(self, x: torch.Tensor) -> torch.Tensor:
        """Each expert's real activation mass sum |h| over its neurons: x [N, H] -> [N, E]."""
        e, m, h = self.w_in.shape
        up = F.linear(x, self.w_in.reshape(e * m, h), None if self.b_in is None else self.b_in.reshape(-1))
        if self.gated:
            hid = self.act(F.linear(x, self.w_gate.reshape(e * m, h))) * up
        else:
            hid = self.act(up)
        return hid.abs().reshape(-1, e, m).sum(-1).float()

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(chosen [N, E] bool, combine weights [N, E] or None) for tokens x [N, H]."""
        n, e = x.shape[0], self.num_experts
        if self.route_all or (self.combine == "sum" and self.top_k >= e and self.threshold <= 0):
            return torch.ones(n, e, dtype=torch.bool, device=x.device), None   # all experts: no scoring
        if self.combine == "softmax":
            probs = self.router(x)                                            # [N, E]
            top, idx = probs.topk(self.top_k, dim=-1)
            weights = torch.zeros_like(probs).scatter_(1, idx, top / top.sum(-1, keepdim=True))
            self.router_flops += self.router.flops(n)
            self.aux_loss = load_balancing_loss(probs, idx, e) if self.training else None
            return weights > 0, weights.to(x.dtype)
        if self.oracle or self.router is None:
            scores = self.oracle_mass(x)
            self.router_flops += 2 * n * self.hidden_size * self.num_experts * self.expert_size * (self._mults() - 1)
        else:
            scores = self.router(x)
            self.router_flops += self.router.flops(n)
        return select_experts(scores, self.top_k, self.threshold), None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])                              # [N, H]
        chosen, weights = self.route(x)
        out = torch.zeros_like(x)
        per_expert = chosen.sum(0).tolist()                                   # tokens per expert
        tokens = chosen.t().nonzero()[:, 1]                                   # token ids grouped by expert
        start = 0
        for e, count in enumerate(per_expert):
            if count == 0:
                continue                                                      # skipped: no compute at all
            idx = tokens[start:start + count]
            start += count
            y = self.expert_hidden(x.index_select(0, idx), e) @ self.w_out[e]  # [n_e, H]
            if weights is not None:
                y = y * weights[idx, e].unsqueeze(1)
            out.index_add_(0, idx, y)
            self.expert_calls += 1
            self.expert_flops += 2 * count * self.expert_size * self.hidden_size * self._mults()
        if self.b_out is not None:
            out = out + self.b_out
        n = x.shape[0]
        self.forwards += 1
        self.tokens += n
        self.assignments += int(sum(per_expert))
        self.dense_flops += 2 * n * self.hidden_size * self._dense_size() * self._mults()
        return out.reshape(shape)

    def _dense_size(self) -> int:
        """d_ff of the dense FFN this layer stands for (upcycled experts are whole copies)."""
        return self.expert_size if self.combine == "softmax" else self.num_experts * self.expert_size

    # ---- saving -----------------------------------------------------------------------------
    def swap_spec(self) -> dict:
        return {"hidden_size": self.hidden_size, "num_experts": self.num_experts, "expert_size": self.expert_size,
                "gated": self.gated, "activation_name": self.activation_name, "bias": self.b_in is not None,
                "combine": self.combine, "top_k": self.top_k, "threshold": self.threshold, "oracle": self.oracle,
                "router": None if self.router is None else self.router.spec()}

    @classmethod
    def from_swap_spec(cls, spec: dict, current: nn.Module, shapes: dict) -> "ExpertFFN":
        """An empty layer as recorded, in the dtype of the module it replaces."""
        dtype = next((p.dtype for p in current.parameters() if p.dtype.is_floating_point), None)
        return cls(**spec, dtype=dtype)

    def extra_repr(self) -> str:
        rule = f"threshold={self.threshold}, max_k={self.top_k}" if self.threshold > 0 else f"top_k={self.top_k}"
        router = "oracle" if self.oracle or self.router is None else type(self.router).__name__
        return (f"hidden={self.hidden_size}, experts={self.num_experts}x{self.expert_size}, {rule}, "
                f"combine={self.combine}, router={router}, gated={self.gated}")


class ExpertOutputPassThrough(nn.Module):
    """Stands in for BERT's `output.dense` after MoEfication: the experts already projected down."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def swap_spec(self) -> dict:
        return {}


def expert_layers(model: nn.Module) -> list[tuple[str, ExpertFFN]]:
    """[(fqn, ExpertFFN)] in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ExpertFFN)]


def expert_counters(model: nn.Module) -> dict[str, int]:
    """The counters of every ExpertFFN summed (see ExpertFFN), plus `layers`."""
    total = {name: 0 for name in _COUNTERS}
    layers = expert_layers(model)
    for _, layer in layers:
        for name, value in layer.counters().items():
            total[name] += value
    return {"layers": len(layers), **total}


def reset_expert_counters(model: nn.Module) -> None:
    for _, layer in expert_layers(model):
        layer.reset_counters()


def collect_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the load-balancing losses the ExpertFFN layers kept in their last forward (or None)."""
    losses = [layer.aux_loss for _, layer in expert_layers(model) if layer.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None

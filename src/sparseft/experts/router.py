"""Routers of `ExpertFFN` and the per-token expert selection rules.

Three ways to score the E experts of a layer for each token x [N, H] -> scores [N, E]:

  * oracle (no module): the experts' real activation mass, sum_i |h_i| over each expert's neurons,
    computed from the dense first projection (so it costs the full up-projection: for analysis,
    it is the best a router can do);
  * `MLPRouter` (MoEfication): a small MLP H -> hidden -> E trained on calibration activations to
    predict each expert's share of the mass (softmax output; `experts/moefy.py::train_router`);
  * `SoftmaxRouter` (sparse upcycling, Switch/Mixtral): one Linear H -> E, softmax -> top-k ->
    renormalised weights, trained by the task loss plus the load-balancing auxiliary loss.

Selection (`select_experts`): a fixed top-k per token, or - with `threshold` > 0 - per token the
fewest experts whose scores add up to `threshold` of the token's total (capped at top-k).
"""

from __future__ import annotations

import torch
import torch.nn as nn

ROUTERS = ("oracle", "mlp")


class MLPRouter(nn.Module):
    """Predicted expert mass shares: softmax(W2 relu(W1 x + b1) + b2), x [N, H] -> [N, E]."""

    def __init__(self, hidden_size: int, num_experts: int, hidden: int = 128, *, dtype=None) -> None:
        super().__init__()
        self.hidden_size, self.num_experts, self.hidden = hidden_size, num_experts, hidden
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden, dtype=dtype), nn.ReLU(),
                                 nn.Linear(hidden, num_experts, dtype=dtype))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x).float(), dim=-1)

    def spec(self) -> dict:
        return {"kind": "mlp", "hidden": self.hidden}

    def flops(self, n_tokens: int) -> int:
        return 2 * n_tokens * (self.hidden_size * self.hidden + self.hidden * self.num_experts)


class SoftmaxRouter(nn.Module):
    """Switch/Mixtral gate: router probabilities softmax(W x), W [E, H] (no bias)."""

    def __init__(self, hidden_size: int, num_experts: int, *, dtype=None) -> None:
        super().__init__()
        self.hidden_size, self.num_experts = hidden_size, num_experts
        self.gate = nn.Linear(hidden_size, num_experts, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.gate(x).float(), dim=-1)

    def spec(self) -> dict:
        return {"kind": "softmax"}

    def flops(self, n_tokens: int) -> int:
        return 2 * n_tokens * self.hidden_size * self.num_experts


def build_router(spec: dict | None, hidden_size: int, num_experts: int, *, dtype=None) -> nn.Module | None:
    """The router module a layer's swap spec names (None: the oracle, which has no weights)."""
    kind = (spec or {}).get("kind", "oracle")
    if kind == "oracle":
        return None
    if kind == "mlp":
        return MLPRouter(hidden_size, num_experts, int(spec.get("hidden", 128)), dtype=dtype)
    if kind == "softmax":
        return SoftmaxRouter(hidden_size, num_experts, dtype=dtype)
    raise ValueError(f"unknown router kind {kind!r}; valid: oracle, mlp, softmax")


def select_experts(scores: torch.Tensor, top_k: int, threshold: float = 0.0) -> torch.Tensor:
    """Boolean [N, E]: each token's chosen experts.

    Args:
        scores: [N, E] non-negative scores (masses or probabilities).
        top_k: experts per token (with `threshold`, the most a token may use).
        threshold: in (0, 1]: the fewest experts whose scores reach this share of the token's
            total; 0 = exactly `top_k`.
    """
    n, e = scores.shape
    k = min(top_k, e)
    top, idx = scores.topk(k, dim=-1)                                   # [N, k], descending
    keep = torch.ones_like(top, dtype=torch.bool)
    if threshold > 0:
        share = top.cumsum(-1) / scores.sum(-1, keepdim=True).clamp_min(1e-12)
        # expert j is kept while the share *before* it is still below the threshold
        before = torch.cat([torch.zeros_like(share[:, :1]), share[:, :-1]], dim=-1)
        keep = before < threshold
    mask = torch.zeros(n, e, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, idx, keep)
    return mask


def load_balancing_loss(probs: torch.Tensor, top_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch/Mixtral auxiliary loss, E/k * sum_e f_e P_e (1.0 when perfectly balanced).

    f_e: share of the N*k token->expert assignments that go to expert e; P_e: mean router
    probability of e. probs [N, E], top_idx [N, k].
    """
    k = top_idx.shape[-1]
    assigned = torch.zeros_like(probs).scatter_(1, top_idx, 1.0)        # [N, E], k ones per row
    f = assigned.mean(0) / k
    p = probs.mean(0)
    return num_experts * (f * p).sum()

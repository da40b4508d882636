"""Configs of the expert methods: `MoEfyConfig` (split a dense FFN) and `UpcycleConfig` (copy it).

Both choose the FFN blocks with `targets` / `ignore` patterns matched on the block's fully
qualified name (BERT: `...layer.N.intermediate`, Llama: `...layers.N.mlp`), as every method does
(config/targets.py): the default `re:.` takes every FFN block of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparseft.config.base import BaseConfig
from sparseft.config.targets import TargetSpec
from sparseft.experts.router import ROUTERS

CLUSTERINGS = ("kmeans", "coactivation")


def _all_blocks() -> list[str]:
    return ["re:."]


def _check_common(cfg) -> None:
    if cfg.num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {cfg.num_experts}")
    if not 1 <= cfg.top_k <= cfg.num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={cfg.num_experts}], got {cfg.top_k}")
    TargetSpec(cfg.targets, cfg.ignore)


@dataclass
class MoEfyConfig(BaseConfig):
    """MoEfication (Zhang et al., 2022): split each FFN's d_ff neurons into E equal experts, no new weights.

    Args:
        num_experts: E; d_ff must be divisible by it (equal-size experts).
        top_k: experts per token (with `threshold`: the most a token may use).
        threshold: in (0, 1]: per token, the fewest experts whose (predicted) activation mass
            reaches this share of the token's total; 0 = always `top_k`.
        clustering: 'kmeans' (balanced k-means on the neurons' normalised weight vectors, no
            data) or 'coactivation' (balanced k-means on the neurons' activation profiles over
            calibration tokens: neurons that fire together share an expert).
        router: 'oracle' (the real activation mass, costs the dense up-projection: for analysis)
            or 'mlp' (a small MLP trained on calibration activations to predict each expert's mass).
        router_hidden: the MLP router's hidden width.
        router_steps / router_lr / router_batch_tokens: its training (Adam, soft cross-entropy
            against the oracle's mass shares).
        calib_tokens: most calibration tokens kept per FFN block (non-padding tokens, in order).
        kmeans_iters: balanced k-means iterations (stops early when assignments settle).
        seed: k-means initialisation and router initialisation / token order.
        targets / ignore: which FFN blocks (patterns on the block's name, see module docstring).
    """

    num_experts: int = 16
    top_k: int = 4
    threshold: float = 0.0
    clustering: str = "kmeans"
    router: str = "oracle"
    router_hidden: int = 128
    router_steps: int = 300
    router_lr: float = 1e-3
    router_batch_tokens: int = 512
    calib_tokens: int = 8192
    kmeans_iters: int = 20
    seed: int = 0
    targets: list[str] = field(default_factory=_all_blocks)
    ignore: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_common(self)
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.clustering not in CLUSTERINGS:
            raise ValueError(f"clustering must be one of {CLUSTERINGS}, got {self.clustering!r}")
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")
        for name in ("router_hidden", "router_steps", "router_batch_tokens", "calib_tokens", "kmeans_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.router_lr <= 0:
            raise ValueError(f"router_lr must be > 0, got {self.router_lr}")

    def needs_batches(self) -> bool:
        return self.clustering == "coactivation" or self.router == "mlp"


@dataclass
class UpcycleConfig(BaseConfig):
    """Sparse upcycling (Komatsuzaki et al., 2023): each FFN becomes E identical copies + a fresh router.

    Args:
        num_experts: E copies of the FFN per block.
        top_k: experts per token; the router's softmax over E is cut to the top-k and renormalised,
            so at initialisation (identical experts) the model computes exactly the dense output.
        aux_loss_coef: weight of the load-balancing loss (Switch / Mixtral) added to the task loss
            by `AuxLoss` (experts/upcycle.py) during fine-tuning.
        router_init_std: std of the router weights' normal initialisation.
        seed: router initialisation.
        targets / ignore: which FFN blocks (patterns on the block's name).
    """

    num_experts: int = 4
    top_k: int = 2
    aux_loss_coef: float = 0.01
    router_init_std: float = 0.02
    seed: int = 0
    targets: list[str] = field(default_factory=_all_blocks)
    ignore: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_common(self)
        if self.aux_loss_coef < 0:
            raise ValueError(f"aux_loss_coef must be >= 0, got {self.aux_loss_coef}")
        if self.router_init_std <= 0:
            raise ValueError(f"router_init_std must be > 0, got {self.router_init_std}")

    def needs_batches(self) -> bool:
        return False

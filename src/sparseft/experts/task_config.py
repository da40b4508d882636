"""Configs of task experts on one backbone (`TaskExpertsConfig`) and of expert-specialized
fine-tuning (`ESFTConfig`). Plain, validated, JSON-round-trippable (config/base.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from sparseft.config.base import BaseConfig, known_config

SAMPLINGS = ("uniform", "proportional", "temperature")
ESFT_SCORES = ("token", "gate")


@known_config
@dataclass
class TaskExpertsConfig(BaseConfig):
    """Per-task sparse diffs as experts on one frozen backbone, trained with L = sum_k L_k.

    Args:
        mask: registered mask method choosing each task's positions (random, magnitude, fisher ...).
        density: share of the targeted weights each task tunes (its diff's density).
        mask_args: more fields of the mask config (e.g. {n_batches: 4} for fisher, targets).
            A `seed` field (random masks) is offset by the task's index, so tasks get their own masks.
        heads: patterns of the head module(s), copied per task with its label count.
        sampling / temperature / batch_size: per optimizer step every task contributes one batch;
            'uniform': batch_size examples from each task; 'proportional': the step's
            K * batch_size examples split by task size n_k; 'temperature': split by n_k^(1/T)
            (T = 1 is proportional, T -> inf uniform). Each task cycles through its own
            reshuffled passes, so small tasks repeat (see task_data.task_batch_sizes).
        steps: optimizer steps; 0 = `epochs` x (sum of task sizes) / (examples per step).
        lr / head_lr: AdamW learning rate of the value vectors / of the heads (None: lr).
        weight_decay: on value vectors (pulls deltas towards 0) and head matrices.
        warmup_ratio / max_grad_norm: linear warmup share, gradient clipping (0 = off).
        eval_batch_size / log_every / seed: evaluation batches, loss log interval, seeds (heads,
            masks, sampling).
    """

    mask: str = "random"
    density: float = 0.01
    mask_args: dict = field(default_factory=dict)
    heads: list[str] = field(default_factory=lambda: ["classifier", "score"])
    sampling: str = "temperature"
    temperature: float = 2.0
    batch_size: int = 16
    steps: int = 0
    epochs: float = 1.0
    lr: float = 1e-3
    head_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0 or self.epochs <= 0:
            raise ValueError(f"steps must be >= 0 and epochs > 0, got steps={self.steps}, epochs={self.epochs}")
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ValueError(f"lr and head_lr must be > 0, got lr={self.lr}, head_lr={self.head_lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not isinstance(self.mask_args, dict):
            raise ValueError(f"mask_args must be a mapping of mask config fields, got {self.mask_args!r}")
        if not self.heads:
            raise ValueError("heads must name at least one head module pattern (e.g. classifier)")
        self.mask_config()          # the mask name and its fields are valid

    def mask_config(self, *, task_index: int = 0, ignore_slots: list[str] | None = None):
        """The registered mask config of task number `task_index` (seed offset, heads ignored)."""
        from sparseft.masks.select import mask_config

        args = {"density": self.density, **self.mask_args}
        try:
            cfg = mask_config(self.mask, **args)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"mask {self.mask!r} / mask_args: {exc}") from None
        changes: dict = {"ignore": list(dict.fromkeys([*cfg.ignore, *self.heads, *(ignore_slots or [])]))}
        if "seed" in {f.name for f in fields(cfg)}:
            changes["seed"] = int(getattr(cfg, "seed")) + task_index
        return cfg.replace(**changes)


@known_config
@dataclass
class ESFTConfig(BaseConfig):
    """Expert-specialized fine-tuning (Wang et al., 2024, DeepSeek ESFT) of an MoE model.

    Args:
        threshold: per layer, keep the fewest experts (highest score first) whose cumulative
            share of the layer's routing reaches this value, in (0, 1].
        score: 'token': share of token -> expert assignments (ESFT's token selection ratio);
            'gate': share of the routing weight (softmax gates of an upcycled layer, the
            router's / oracle's mass shares of a MoEfied one).
        min_experts / max_experts: bounds per layer (max 0 = no bound).
        train_router: also tune the routers of layers that keep experts (ESFT freezes them).
        score_batches: task batches used for scoring (the first N).
    """

    threshold: float = 0.5
    score: str = "token"
    min_experts: int = 1
    max_experts: int = 0
    train_router: bool = False
    score_batches: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.score not in ESFT_SCORES:
            raise ValueError(f"score must be one of {ESFT_SCORES}, got {self.score!r}")
        if self.min_experts < 1 or self.max_experts < 0:
            raise ValueError(f"min_experts must be >= 1 and max_experts >= 0, got "
                             f"{self.min_experts}, {self.max_experts}")
        if self.max_experts and self.max_experts < self.min_experts:
            raise ValueError(f"max_experts ({self.max_experts}) must be >= min_experts ({self.min_experts})")
        if self.score_batches < 1:
            raise ValueError(f"score_batches must be >= 1, got {self.score_batches}")

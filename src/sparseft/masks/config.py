"""Shared fields of every mask-selection config: budget, allocation and targets.

A mask config says *which* weights a sparse fine-tuning trains:

  * budget, exactly one of
      - `density`: fraction of the targeted weights' entries (default 0.01 when none is given),
      - `count`: exact number of entries,
      - `match_lora_rank: r`: the number of trainable parameters LoRA of rank r would have on the
        same targets (r * (in + out) per [out, in] weight, capped at the weight's size);
  * `allocation`: "global" (one top-k over all targets: some tensors get more, some none) or
    "per_tensor" (each tensor gets its share, proportional to its size; with match_lora_rank each
    tensor gets exactly its LoRA count);
  * `targets` / `ignore`: module class names, "re:<regex>" or fqn suffixes (see
    `sparseft.config.targets`). The defaults target every `nn.Linear` and ignore task heads
    (`classifier`, `score`, `qa_outputs`: trained densely by sparse fine-tuning) and `lm_head`
    (often tied to the input embeddings).

Each selection method (random.py, magnitude.py, ...) subclasses `MaskConfig` with its own
fields and registers itself with `register_method(kind="mask", ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparseft.config.base import BaseConfig
from sparseft.config.targets import TargetSpec
from sparseft.masks.mask import ALLOCATIONS

# Heads a task model adds on top of the base checkpoint: trained densely, never sparsified.
DEFAULT_HEADS = ("classifier", "score", "qa_outputs")
DEFAULT_IGNORE = (*DEFAULT_HEADS, "lm_head")
DEFAULT_DENSITY = 0.01
# The mask method sparse fine-tuning uses when none is named: `train --method sft` (SFTConfig),
# `chat-sft --mode sparse` (ChatSFTConfig) and the Python API all read this one constant.
DEFAULT_MASK = "fisher"


@dataclass
class MaskConfig(BaseConfig):
    """Args:
        density: fraction of targeted entries to select, in (0, 1].
        count: exact number of entries to select.
        match_lora_rank: select as many entries as LoRA of this rank has parameters.
        allocation: "global" or "per_tensor".
        targets: patterns of modules whose `weight` is sparsely tuned.
        ignore: patterns of modules never selected (defaults: task heads and lm_head).
    """

    density: float | None = None
    count: int | None = None
    match_lora_rank: int | None = None
    allocation: str = "global"
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORE))

    def __post_init__(self) -> None:
        given = [n for n in ("density", "count", "match_lora_rank") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one budget of density, count and match_lora_rank; got {given}")
        if not given:
            self.density = DEFAULT_DENSITY
        if self.density is not None and not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        if self.match_lora_rank is not None and self.match_lora_rank < 1:
            raise ValueError(f"match_lora_rank must be >= 1, got {self.match_lora_rank}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        spec = TargetSpec(self.targets, self.ignore)  # validates patterns, accepts a lone string
        self.targets, self.ignore = list(spec.targets), list(spec.ignore)

    @property
    def target_spec(self) -> TargetSpec:
        return TargetSpec(list(self.targets), list(self.ignore))

    def batches_needed(self) -> int:
        """How many training batches selection consumes (0: data-free methods)."""
        return 0

    def with_budget(self, *, density: float | None = None, count: int | None = None,
                    match_lora_rank: int | None = None) -> "MaskConfig":
        """A copy with another budget (the old one is cleared, so exactly one is set)."""
        return self.replace(density=density, count=count, match_lora_rank=match_lora_rank)

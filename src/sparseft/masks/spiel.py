"""`spiel_ag` and `spiel_ma` masks: SpIEL dynamic sparse fine-tuning (Ansell et al. 2024,
"Scaling Sparse Fine-Tuning to Large Language Models", arXiv 2401.16405).

SpIEL keeps k trainable entries per weight and, every R optimizer steps, replaces a decaying
share of them. The share drops over training, following the reference code (`AlanAnsell/peft`,
`SftSelector`): rate_t = initial_rate * (1 - t / T) at step t of T (`schedule="linear"`, the
default). RigL's cosine decay and a constant rate are also offered. Each reselection
  * drops the n = round(rate_t * k) entries of each tensor with the smallest |delta| (their
    delta is discarded, so the entry goes back to W0), and
  * regrows n entries that were not trained before the drop:
      - `spiel_ag` (SpIEL-AG) takes the largest |gradient accumulated over the last
        `accumulation_steps` steps before the reselection| (a dense fp32 buffer per targeted
        weight during those steps only);
      - `spiel_ma` (SpIEL-MA) takes the largest SM3-style estimate of the gradients' second
        moment, built from one row accumulator and one column accumulator per weight
        (O(rows + cols) memory, updated every step).

This file holds the configs, the rate schedule and the *initial* selection (`init`: random,
magnitude or fisher). The reselection itself is `sparseft.sft.spiel.SpielHook`, a `post_step`
hook that `sparse_finetune` gives to the training loop (that module documents memory, the
estimate and the optimizer-state reset).

The reference code starts from a random mask and replaces all of it (rate 1) after the first
accumulation window, so its starting mask is in effect gradient-based. Here `init="fisher"`
(the default) makes a gradient-based mask before training starts instead.

    cfg = mask_config("spiel_ag", density=0.01, interval=20, initial_rate=0.2, accumulation_steps=5)
    sparseft train --method sft --mask spiel_ag --set mask_options={interval: 20}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparseft.masks.config import MaskConfig
from sparseft.masks.regrow import initial_scores
from sparseft.registry import register_method

INITS = ("random", "magnitude", "fisher")
SCHEDULES = ("linear", "cosine", "constant")
ESTIMATES = ("product", "min")


@dataclass
class SpielMaskConfig(MaskConfig):
    """Fields shared by `spiel_ag` and `spiel_ma` (plus MaskConfig's budget and targets). Args:
        init: initial selection, one of INITS (fisher: largest squared gradients on n_batches).
        interval: R, optimizer steps between two reselections (SpIEL's reselection_steps).
        initial_rate: share of each tensor's entries replaced by a reselection at step 0, in
            (0, 1] (SpIEL's initial_reselection_rate).
        schedule: how the rate decays over the T planned steps, one of SCHEDULES:
            linear   initial_rate * (1 - t/T)                 (SpIEL's reference code)
            cosine   initial_rate * (1 + cos(pi * t/T)) / 2   (RigL)
            constant initial_rate
        n_batches: batches for init="fisher".
        seed: seed for init="random".
    """

    init: str = "fisher"
    interval: int = 20
    initial_rate: float = 0.2
    schedule: str = "linear"
    n_batches: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")
        if not 0.0 < self.initial_rate <= 1.0:
            raise ValueError(f"initial_rate must be in (0, 1], got {self.initial_rate}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.n_batches < 1:
            raise ValueError(f"n_batches must be >= 1, got {self.n_batches}")

    def batches_needed(self) -> int:
        return self.n_batches if self.init == "fisher" else 0

    def rate_at(self, step: int, total_steps: int) -> float:
        """Share of each tensor's entries that the reselection after optimizer step `step` (of
        `total_steps`) replaces. Example: linear, initial_rate 0.2, T = 100: 0.2 at step 0, 0.1
        at step 50, 0 at step 100."""
        if self.schedule == "constant":
            return self.initial_rate
        frac = min(max(step / max(1, total_steps), 0.0), 1.0)
        if self.schedule == "linear":
            return self.initial_rate * (1.0 - frac)
        return self.initial_rate * 0.5 * (1.0 + math.cos(math.pi * frac))


@dataclass
class SpielAGMaskConfig(SpielMaskConfig):
    """SpIEL-AG: regrow by accumulated gradients. Args (plus SpielMaskConfig's):
        accumulation_steps: A, the optimizer steps right before each reselection whose dense
            weight gradients are summed, in [1, interval]. A dense fp32 buffer per targeted
            weight exists during these A steps only (SpIEL's selection_accumulation_steps).
    """

    accumulation_steps: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.accumulation_steps <= self.interval:
            raise ValueError(f"accumulation_steps must be in [1, interval={self.interval}], "
                             f"got {self.accumulation_steps}")


@dataclass
class SpielMAMaskConfig(SpielMaskConfig):
    """SpIEL-MA: regrow by an SM3-style estimate of the gradients' second moment. Args (plus
    SpielMaskConfig's):
        estimate: how row accumulator r and column accumulator c give an entry's score, one of
            ESTIMATES: "product" r_i * c_j (SpIEL's reference code), "min" min(r_i, c_j) (SM3's
            per-entry estimate, an upper bound of the entry's summed squared gradient).
        beta: decay of the accumulators per step, in (0, 1]; 1 = plain SM3 sums (no decay), < 1
            weights recent gradients more (an exponential-moving variant).
    """

    estimate: str = "product"
    beta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.estimate not in ESTIMATES:
            raise ValueError(f"estimate must be one of {ESTIMATES}, got {self.estimate!r}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")


register_method(kind="mask", name="spiel_ag", config_cls=SpielAGMaskConfig, apply_fn=initial_scores,
                description="SpIEL-AG: drop smallest |delta|, regrow by accumulated gradients, decaying rate")
register_method(kind="mask", name="spiel_ma", config_cls=SpielMAMaskConfig, apply_fn=initial_scores,
                description="SpIEL-MA: drop smallest |delta|, regrow by SM3 row/column gradient estimates")

"""`snr` mask: entries whose task gradient points the same way batch after batch, scored by the
gradient's signal-to-noise ratio |mean_b g_b| / (rms_b g_b + eps) over `n_batches` training batches.

An optimizer-free proxy of the `lottery` mask: Adam moves an entry by about
lr * m / (sqrt(v) + eps) per step, and with the weights held at W0, m / sqrt(v) is exactly this
ratio, so the entries a short dense Adam phase would move most are (to first order) the ones
ranked highest here, found without a dense phase, optimizer state or rewind. `eps` is Adam's
(1e-8): entries whose gradients are far below it score ~0, as Adam would barely move them.

Selection needs dense gradients of the targeted weights and two fp32 buffers of their size
(sum of g and of g^2), during selection only, as `fisher` needs one; the model runs in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseft.masks.config import MaskConfig
from sparseft.masks.fisher import gradient_moments
from sparseft.registry import register_method


@dataclass
class SNRMaskConfig(MaskConfig):
    """Args (plus MaskConfig's budget and targets):
        n_batches: training batches whose gradients are averaged.
        eps: added to the gradient's root mean square (Adam's epsilon).
    """

    n_batches: int = 32
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_batches < 2:
            raise ValueError(f"n_batches must be >= 2 (a ratio over one batch is 1 everywhere), got {self.n_batches}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")

    def batches_needed(self) -> int:
        return self.n_batches


def snr_scores(model, params: dict, cfg: SNRMaskConfig, *, batches=None, loss_fn=None) -> dict:
    squares, sums = gradient_moments(model, params, batches, cfg.n_batches, loss_fn, first=True)
    n = cfg.n_batches
    return {name: (sums[name] / n).abs() / ((squares[name] / n).sqrt() + cfg.eps) for name in params}


register_method(kind="mask", name="snr", config_cls=SNRMaskConfig, apply_fn=snr_scores,
                description="gradient signal-to-noise |mean g| / rms g (an optimizer-free lottery proxy)")

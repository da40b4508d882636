"""The fields every factorization method shares: how ranks are chosen, and which layers.

A factorization replaces a Linear weight W [out, in] by two factors, up [out, r] and
down [r, in], so the layer stores r * (in + out) numbers instead of in * out. Ranks come from
exactly one of:

  * `ratio`    - remove this fraction of the targeted weights' parameters in total. With
                 allocation="global" (default) ranks are spread across layers by comparing the
                 importance of every singular value: each layer's squared singular values,
                 normalised by the layer's total (so every layer's spectrum sums to 1), are
                 ranked together and kept from the top until the parameter budget is spent.
                 allocation="uniform" gives every layer the same parameter ratio instead.
  * `energy`   - per layer, the smallest rank whose squared singular values hold at least this
                 fraction of the layer's total (of the method's weighted matrix, see each method).
  * `ranks`    - explicit ranks: {pattern: rank}, patterns as in `targets` (exact name, name
                 suffix or "re:<regex>"); the first matching pattern wins; targeted layers that
                 match none are left dense.

A layer is left dense when its rank gives no gain, r * (in + out) >= in * out (the report lists
it under `dense_layers` with the reason "no_gain"). Biases stay with the `up` factor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparseft.compress.prune.common import default_ignore, default_targets
from sparseft.config.base import BaseConfig
from sparseft.config.targets import TargetSpec

ALLOCATIONS = ("global", "uniform")


@dataclass
class FactorizeConfig(BaseConfig):
    """Shared fields (each method's config adds its own). Args:
        ratio: fraction of the targeted weights' parameters to remove, in (0, 1).
        energy: fraction of (weighted) spectral energy each layer keeps, in (0, 1].
        ranks: explicit {pattern: rank} map (rank >= 1).
        allocation: for `ratio`: "global" (by normalised singular values) or "uniform".
        min_rank: smallest rank a factorized layer gets (ratio / energy modes).
        targets / ignore: which Linear layers are factorized (task heads are ignored by default).
    """

    ratio: float | None = None
    energy: float | None = None
    ranks: dict = field(default_factory=dict)
    allocation: str = "global"
    min_rank: int = 1
    targets: list[str] = field(default_factory=default_targets)
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        given = [name for name, v in (("ratio", self.ratio), ("energy", self.energy), ("ranks", self.ranks))
                 if v not in (None, {})]
        if len(given) != 1:
            raise ValueError(f"{type(self).__name__}: set exactly one of ratio, energy or ranks, got "
                             f"{given or 'none'}")
        if self.ratio is not None and not (isinstance(self.ratio, (int, float)) and 0.0 < self.ratio < 1.0):
            raise ValueError(f"ratio must be a fraction in (0, 1) of parameters to remove, got {self.ratio!r}")
        if self.energy is not None and not (isinstance(self.energy, (int, float)) and 0.0 < self.energy <= 1.0):
            raise ValueError(f"energy must be in (0, 1], got {self.energy!r}")
        if not isinstance(self.ranks, dict):
            raise ValueError(f"ranks must be a mapping {{pattern: rank}}, got {self.ranks!r}")
        for pattern, rank in self.ranks.items():
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ValueError(f"ranks[{pattern!r}] must be an integer >= 1, got {rank!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if isinstance(self.min_rank, bool) or not isinstance(self.min_rank, int) or self.min_rank < 1:
            raise ValueError(f"min_rank must be an integer >= 1, got {self.min_rank!r}")
        TargetSpec(targets=self.targets, ignore=self.ignore)
        TargetSpec(targets=list(self.ranks) or ["x"])   # the rank patterns' regexes compile

    def needs_batches(self) -> bool:
        """Calibration batches needed (data-aware methods override this)."""
        return False

    def needs_labels(self) -> bool:
        """Batches must carry labels (gradient-based methods override this)."""
        return False

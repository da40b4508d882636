"""Pruning: zero weights (unstructured, N:M) or remove whole units (structured), one verb.

    from sparseft.compress.prune import prune_, MagnitudePruneConfig, WandaConfig
    prune_(model, MagnitudePruneConfig(sparsity=0.5))
    prune_(model, WandaConfig(sparsity=0.5, pattern="2:4"), batches=calibration_batches)

One module per method (config dataclass + apply function + `register_method(kind="prune")`):
magnitude, random, movement, nm, wanda, sparsegpt, structured. `schedule.py` holds the gradual
(cubic) schedule used during fine-tuning, `stage.py` the recipe stages `prune` and
`prune_finetune`. Masks use the shared machinery of `sparseft.masks.mask`.
"""

from sparseft.compress.prune.api import needs_batches, prune_
from sparseft.compress.prune.common import nonzero_masks, sparsity_report
from sparseft.compress.prune.magnitude import MagnitudePruneConfig
from sparseft.compress.prune.movement import MovementPruneConfig
from sparseft.compress.prune.nm import NMPruneConfig
from sparseft.compress.prune.random import RandomPruneConfig
from sparseft.compress.prune.sparsegpt import SparseGPTConfig
from sparseft.compress.prune.structured import StructuredPruneConfig
from sparseft.compress.prune.wanda import WandaConfig

__all__ = ["prune_", "needs_batches", "nonzero_masks", "sparsity_report", "MagnitudePruneConfig",
           "MovementPruneConfig", "NMPruneConfig", "RandomPruneConfig", "SparseGPTConfig",
           "StructuredPruneConfig", "WandaConfig"]

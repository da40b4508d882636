"""Sparse experts from dense models: MoEfication (split each FFN into routed experts) and sparse upcycling.

    from sparseft.experts import MoEfyConfig, UpcycleConfig, moefy_, upcycle_, train_router
    moefy_(model, MoEfyConfig(num_experts=16, top_k=4, router="mlp"), batches=calib)
    expert_counters(model)        # expert calls and FLOPs actually run vs the dense FFN's

Modules: config.py (configs), sites.py (finding FFN blocks), cluster.py (balanced k-means),
layer.py (`ExpertFFN` with real compute skipping), router.py (routers, top-k / threshold
selection, load-balancing loss), moefy.py, upcycle.py (the methods, registered), api.py (the
`moefy_` verb and the saved-folder record), stage.py (recipe stages).
"""

from sparseft.experts.api import moefy_, set_routing_, upcycle_
from sparseft.experts.config import MoEfyConfig, UpcycleConfig
from sparseft.experts.layer import (ExpertFFN, collect_aux_loss, expert_counters, expert_layers,
                                    reset_expert_counters)
from sparseft.experts.moefy import train_router
from sparseft.experts.upcycle import AuxLoss

__all__ = ["AuxLoss", "ExpertFFN", "MoEfyConfig", "UpcycleConfig", "collect_aux_loss", "expert_counters",
           "expert_layers", "moefy_", "reset_expert_counters", "set_routing_", "train_router", "upcycle_"]

"""Sparse experts from dense models: MoEfication (split each FFN into routed experts) and sparse upcycling.

    from sparseft.experts import MoEfyConfig, UpcycleConfig, moefy_, upcycle_, train_router
    moefy_(model, MoEfyConfig(num_experts=16, top_k=4, router="mlp"), batches=calib)
    expert_counters(model)        # expert calls and FLOPs actually run vs the dense FFN's

Modules: config.py (configs), sites.py (finding FFN blocks), cluster.py (balanced k-means),
layer.py (`ExpertFFN` with real compute skipping), router.py (routers, top-k / threshold
selection, load-balancing loss), moefy.py, upcycle.py (the methods, registered), api.py (the
`moefy_` verb and the saved-folder record), stage.py (recipe stages).

Task experts on one backbone (per-task sparse diffs routed by task id) and ESFT:
task_config.py (TaskExpertsConfig, ESFTConfig), task_layer.py (TaskSparseDelta, TaskHeads),
multitask.py (build_task_experts, extract_task), task_data.py (task-balanced sampling),
task_train.py (train_tasks: L = sum_k L_k), esft.py (esft_), task_stage.py (stages
task_experts, esft); the artifact is written by sparseft.export.task_experts.
"""

from sparseft.experts.api import moefy_, set_routing_, upcycle_
from sparseft.experts.config import MoEfyConfig, UpcycleConfig
from sparseft.experts.esft import esft_
from sparseft.experts.layer import (ExpertFFN, collect_aux_loss, expert_counters, expert_layers,
                                    reset_expert_counters)
from sparseft.experts.moefy import train_router
from sparseft.experts.multitask import MultiTaskModel, build_task_experts, extract_task
from sparseft.experts.task_config import ESFTConfig, TaskExpertsConfig
from sparseft.experts.task_train import train_tasks
from sparseft.experts.upcycle import AuxLoss

__all__ = ["AuxLoss", "ESFTConfig", "ExpertFFN", "MoEfyConfig", "MultiTaskModel", "TaskExpertsConfig", "UpcycleConfig",
           "build_task_experts", "collect_aux_loss", "esft_", "expert_counters", "expert_layers", "extract_task",
           "moefy_", "reset_expert_counters", "set_routing_", "train_router", "train_tasks", "upcycle_"]

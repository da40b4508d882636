"""Sharded-engine save path without processes: generated DeepSpeed config, the strict copy-back of a
gathered state (empty / partitioned tensors refused: the "empty adapter under ZeRO-3" bug class),
the DeepSpeed gather with a fake `deepspeed` module, and the replica's optimizer-group remapping.

The real 2-process runs are in test_fsdp_multiproc.py (FSDP2) and test_deepspeed_multiproc.py
(skipped unless DeepSpeed is installed).
"""

from __future__ import annotations

import contextlib
import sys
import types

import pytest
import torch

from sparseft.sft.api import diff_from_layers
from sparseft.sft.layer import sparsify_
from sparseft.train import distributed
from sparseft.train.config import TrainConfig


def _sparse_toy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    for p in model.parameters():
        p.requires_grad_(False)
    masks = {"0.weight": torch.rand(4, 6) < 0.5, "2.weight": torch.rand(3, 4) < 0.5}
    return model, sparsify_(model, masks)


def _state(model):
    """What gather_full_state returns: every parameter and buffer by name."""
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


def test_generated_deepspeed_config_per_stage():
    cfg = TrainConfig(distributed="deepspeed", zero_stage=3, offload=True, batch_size=2, grad_accum=4,
                      max_grad_norm=0.5)
    kwargs = distributed.deepspeed_plugin_kwargs(cfg, num_processes=2)
    ds = kwargs["hf_ds_config"]
    assert kwargs["zero3_init_flag"] is False  # the model exists before the Accelerator: no zero.Init
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (16, 2, 4)
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["stage3_gather_16bit_weights_on_model_save"] is True  # else get_state_dict returns empty tensors
    assert ds["gradient_clipping"] == 0.5 and ds["zero_force_ds_cpu_optimizer"] is False
    z2 = distributed.deepspeed_config(zero_stage=2, offload=True, batch_size=1, grad_accum=1, num_processes=1,
                                      max_grad_norm=None)["zero_optimization"]
    assert z2["offload_param"]["device"] == "none" and z2["stage3_gather_16bit_weights_on_model_save"] is False
    for bad in ({"zero_stage": 4}, {"zero_stage": 0, "offload": True}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            distributed.deepspeed_config(**{"zero_stage": 2, "offload": False, "batch_size": 1, "grad_accum": 1,
                                            "num_processes": 1, "max_grad_norm": 1.0, **bad})


def test_train_config_checks_distributed_fields():
    assert TrainConfig(distributed="fsdp").zero_stage == 2
    for bad in ({"distributed": "horovod"}, {"distributed": "deepspeed", "zero_stage": 0}, {"offload": True},
                {"base_dtype": "int8"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    assert distributed.engine_for(TrainConfig(distributed="fsdp"), 1) is None  # one process: nothing to shard
    assert distributed.engine_for(TrainConfig(distributed="fsdp"), 2) == "fsdp"
    assert distributed.engine_for(TrainConfig(distributed="deepspeed"), 1) == "deepspeed"
    with pytest.raises(ValueError, match="post_step"):
        distributed.check_engine_supported("fsdp", post_step=[print], resume_checkpoint=False)
    with pytest.raises(ValueError, match="resume"):
        distributed.check_engine_supported("deepspeed", post_step=(), resume_checkpoint=True)


def test_gathered_state_is_copied_into_the_sparse_layers_and_the_diff_is_complete():
    model, layers = _sparse_toy()
    trained = _state(model)
    for name in trained:
        if name.endswith(".values"):
            trained[name] = torch.randn_like(trained[name])
    distributed.copy_state_into_(model, trained)
    diff = diff_from_layers(layers, {}, {})
    for name, layer in layers.items():
        order = torch.argsort(layer.indices)
        assert torch.equal(diff.values[name], trained[name.replace(".weight", ".values")][order])
        assert diff.values[name].numel() == layer.indices.numel() > 0


def test_empty_or_missing_gathered_tensors_are_refused():
    model, _ = _sparse_toy()
    state = _state(model)
    partitioned = dict(state, **{"0.values": torch.empty(0)})  # what an ungathered ZeRO-3 parameter holds
    with pytest.raises(ValueError, match="shape"):
        distributed.copy_state_into_(model, partitioned)
    with pytest.raises(ValueError, match="missing"):
        distributed.copy_state_into_(model, {k: v for k, v in state.items() if k != "2.values"})


def test_deepspeed_gather_uses_fp32_master_for_trainable_and_gathers_frozen(monkeypatch):
    """A fake `deepspeed`: trainable tensors come from safe_get_full_fp32_param (the fp32 master,
    not the bf16 module copy); frozen ones are read inside GatheredParameters."""
    model, layers = _sparse_toy()
    masters = {id(layer.values): torch.full_like(layer.values, 7.0) for layer in layers.values()}
    gathered = []

    @contextlib.contextmanager
    def gathered_parameters(params, modifier_rank=None):
        gathered.extend(params)
        yield

    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=gathered_parameters)
    fake_utils = types.ModuleType("deepspeed.utils")
    fake_utils.safe_get_full_fp32_param = lambda p: masters.get(id(p))
    fake.utils = fake_utils
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    monkeypatch.setitem(sys.modules, "deepspeed.utils", fake_utils)
    state = distributed.gather_full_state(model, "deepspeed")
    assert all(torch.equal(state[n.replace(".weight", ".values")], torch.full_like(layer.values, 7.0))
               for n, layer in layers.items())
    frozen_ids = {id(p) for p in model.parameters() if not p.requires_grad}
    assert {id(p) for p in gathered} == frozen_ids


def test_replica_groups_point_at_the_replica(monkeypatch):
    model, layers = _sparse_toy()
    groups = [{"params": [layer.values for layer in layers.values()], "weight_decay": 0.1}]
    replica, new_groups = distributed.make_replica(model, groups, engine="deepspeed", device=torch.device("cpu"),
                                                   zero_stage=2)
    replica_params = {id(p) for p in replica.parameters()}
    assert all(id(p) in replica_params for p in new_groups[0]["params"]) and new_groups[0]["weight_decay"] == 0.1
    assert not any(id(p) in replica_params for p in model.parameters())  # a copy, never the caller's tensors
    with pytest.raises(ValueError, match="not parameters"):
        distributed.make_replica(model, [{"params": [torch.nn.Parameter(torch.ones(1))]}], engine="deepspeed",
                                 device=torch.device("cpu"))

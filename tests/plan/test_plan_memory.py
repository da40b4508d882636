"""The planner's arithmetic on hand-computed cases (a toy ModelShape), and its inputs' checks."""

import pytest

from sparseft.plan.memory import PlanInput, activation_bytes, format_table, plan, plan_row, trainable_count
from sparseft.plan.shapes import ModelShape

TOY = ModelShape(name="toy", decoder=True, params=1000, linear_params=800, lora_per_rank=100, largest_linear=200,
                 block_params=300, layers=2, hidden=4, intermediate=8, heads=2, kv_dim=4, vocab=10)


def _inp(**kw):
    return PlanInput(**{"devices": 1, "batch_size": 1, "seq_len": 2, **kw})


def test_activations_by_hand():
    # per token: 2 blocks x (9*4 + 4*8) fp32 elements = 2 x 272 B, + LM head 3 x 10 x 4 B = 120 B; 2 tokens
    assert activation_bytes(TOY, _inp()) == 2 * (2 * 272 + 120)
    # checkpointing: one h per block (2 x 16 B) + one block's set (272 B) + head
    assert activation_bytes(TOY, _inp(gradient_checkpointing=True)) == 2 * (32 + 272 + 120)
    # bf16 activations halve the blocks, not the fp32 head
    assert activation_bytes(TOY, _inp(act_dtype="bf16")) == 2 * (2 * 136 + 120)
    enc = ModelShape(**{**TOY.__dict__, "decoder": False, "attention_dropout": True})
    # encoder: (13*4 + 2*8) * 4 = 272 B + probabilities 2 heads x 2 positions x (2*4 + 1) B = 36 B; no head
    assert activation_bytes(enc, _inp()) == 2 * 2 * (272 + 36)
    assert activation_bytes(TOY, _inp(attention="eager")) == 2 * (2 * (272 + 2 * 2 * 2 * 4) + 120)


def test_full_sparse_lora_single_device_by_hand():
    full = plan_row(TOY, _inp(mode="full"), "ddp")
    assert (full.weights, full.gradients, full.optimizer) == (4000, 4000, 8000)
    # backward peak 4000 + 8000 + max(4000, 1328) = 16000 < optimizer-step peak W + O + G + temp = 20000
    assert full.total == 20000
    sparse = plan_row(TOY, _inp(mode="sparse", density=0.1), "ddp")
    assert trainable_count(TOY, _inp(mode="sparse", density=0.1)) == 80
    # W0 4000 + values 320 + int64 indices 640; grads 320 + one dense fp32 grad of the largest weight (800)
    assert (sparse.weights, sparse.gradients, sparse.optimizer) == (4960, 1120, 640)
    assert sparse.total == 4960 + 640 + 1120 + 320  # step peak 7040 > backward 4960 + 640 + 1328
    lora = plan_row(TOY, _inp(mode="lora", rank=2), "ddp")
    assert (lora.weights, lora.gradients, lora.optimizer, lora.total) == (4800, 800, 1600, 8000)


def test_sharding_strategies_by_hand():
    rows = {r.strategy: r for r in plan(TOY, _inp(mode="full", devices=4))}
    fsdp = rows["fsdp"]
    assert (fsdp.weights, fsdp.gradients, fsdp.optimizer, fsdp.transient) == (1000, 1000, 2000, 2400)
    assert fsdp.total == 1000 + 2000 + 2400 + 1328
    z2 = rows["zero2"]
    assert (z2.weights, z2.gradients, z2.optimizer, z2.total) == (4000, 1000, 2000, 8000)
    assert rows["zero2-offload"].optimizer == 0 and rows["zero2-offload"].host == 2000 + 1000
    off = rows["zero3-offload"]
    assert (off.weights, off.gradients, off.optimizer, off.host) == (0, 0, 0, 4000)
    assert rows["zero3"].transient == 30_000_000 * 4  # the generated config's live-parameter budget
    # multi-process DDP keeps gradient buckets alive next to the activations
    ddp2 = plan_row(TOY, _inp(mode="full", devices=2), "ddp")
    assert ddp2.total == max(4000 + 8000 + 4000 + 1328, 20000)


def test_bf16_full_and_frozen_base():
    full = plan_row(TOY, _inp(mode="full", base_dtype="bf16"), "ddp")
    assert (full.weights, full.gradients, full.optimizer) == (2000, 2000, 4000)  # the model itself is bf16
    lora = plan_row(TOY, _inp(mode="lora", rank=2, base_dtype="bf16"), "ddp")
    assert (lora.weights, lora.gradients) == (2000 + 800, 800)  # adapters stay fp32


def test_bad_inputs_are_refused():
    for bad in ({"mode": "qlora"}, {"density": 0.0}, {"devices": 0}, {"base_dtype": "int8"}, {"attention": "x"}):
        with pytest.raises(ValueError):
            _inp(**bad)
    with pytest.raises(ValueError, match="strategy"):
        plan_row(TOY, _inp(), "zero4")


def test_table_has_every_strategy():
    text = format_table(TOY, _inp(), plan(TOY, _inp()))
    for s in ("ddp", "fsdp", "zero2", "zero2-offload", "zero3", "zero3-offload", "total / device"):
        assert s in text

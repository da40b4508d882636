"""Activation checkpointing and the frozen-base dtype (TrainConfig.gradient_checkpointing /
base_dtype) for full, sparse and LoRA fine-tuning of a tiny Llama, in one process.

Checkpointing recomputes each block in backward: the same losses as without it (to float
rounding), far fewer bytes saved for backward in the forward (counted with saved_tensors_hooks),
and the model leaves with it switched off.
base_dtype bf16 stores the frozen weights in bf16 while sparse values / LoRA matrices stay fp32
(their gradients and AdamW state too); the losses stay close to the fp32 run.
"""

from __future__ import annotations

import pytest
import torch

from sparseft.chat.modes import apply_lora
from sparseft.masks.magnitude import MagnitudeMaskConfig
from sparseft.sft.api import sparse_finetune
from sparseft.train.config import TrainConfig
from sparseft.train.loop import train

STEPS = 3


def _reset_accelerate():
    """Accelerate keeps one process-wide state whose mixed precision cannot change; the runs here
    switch between fp32 and bf16 (accelerate's own tests reset it the same way)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    _reset_accelerate()
    yield
    _reset_accelerate()


def _data(vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(8):
        ids = torch.randint(7, vocab, (12,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * 12, "labels": ids})
    return rows


def _collate(rows):
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def _cfg(tmp_path, name, **kw) -> TrainConfig:
    kw = {"mixed_precision": "no", **kw}
    return TrainConfig(output_dir=str(tmp_path / name), max_steps=STEPS, batch_size=4, lr=1e-2, warmup_ratio=0.0,
                       weight_decay=0.0, eval_every="never", progress=False, log_every=1, resume=False,
                       group_by_length=False, **kw)


def _run(mode: str, tiny_llama_dir, tmp_path, name: str, **kw):
    """(losses, model, diff or None, bytes saved for backward in the last forward) after STEPS steps."""
    from transformers import AutoModelForCausalLM

    _reset_accelerate()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    data, cfg = _data(model.config.vocab_size), _cfg(tmp_path, name, **kw)
    saved = []  # bytes autograd keeps for backward in each training forward

    def loss_fn(m, batch):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = m(**batch).loss
        saved.append(total[0])
        return loss

    extra = None
    if mode == "full":
        result = train(model, data, cfg, collate_fn=_collate, loss_fn=loss_fn)
    elif mode == "sparse":
        result, extra = sparse_finetune(model, data, cfg, MagnitudeMaskConfig(density=0.1), collate_fn=_collate,
                                        heads=[], loss_fn=loss_fn)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        model = apply_lora(model, rank=2, alpha=None, module_name="layers.")
        result = train(model, data, cfg, collate_fn=_collate, loss_fn=loss_fn)
    losses = [h["loss"] for h in result.history if "loss" in h]
    return losses, model, extra, saved[-1]  # the last forward: after warm-up / mask selection


@pytest.mark.parametrize("mode", ["full", "sparse", "lora"])
def test_gradient_checkpointing_same_losses_and_recomputes(mode, tiny_llama_dir, tmp_path):
    plain, _, _, plain_saved = _run(mode, tiny_llama_dir, tmp_path, "plain")
    ckpt, model, _, ckpt_saved = _run(mode, tiny_llama_dir, tmp_path, "ckpt", gradient_checkpointing=True)
    assert plain[-1] < plain[0]
    assert ckpt == pytest.approx(plain, rel=1e-5, abs=1e-6)
    # inside checkpointed blocks torch keeps only the inputs: the forward saves far less
    assert ckpt_saved < 0.6 * plain_saved, (ckpt_saved, plain_saved)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert not base.is_gradient_checkpointing  # switched off again for what follows training


@pytest.mark.parametrize("mode", ["full", "sparse", "lora"])
def test_bf16_frozen_base_keeps_trainable_fp32(mode, tiny_llama_dir, tmp_path):
    fp32, _, _, _ = _run(mode, tiny_llama_dir, tmp_path, "fp32")
    bf16, model, diff, _ = _run(mode, tiny_llama_dir, tmp_path, "bf16", base_dtype="bf16", mixed_precision="auto")
    assert bf16[-1] < bf16[0]
    # bf16 keeps 8 mantissa bits: the few-step losses stay within 2% of the fp32 run's
    assert bf16 == pytest.approx(fp32, rel=2e-2)
    if mode == "full":  # no frozen weights: the model itself is bf16 (as torch_dtype=bf16)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        return
    dtypes = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
    assert dtypes == {torch.bfloat16}  # frozen base (and, for sparse, the merged weights)
    if mode == "sparse":
        assert {v.dtype for v in diff.values.values()} == {torch.float32}  # the deltas stayed fp32
        assert diff.count > 0
    else:
        assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}


def test_bf16_base_with_a_trainable_fp32_head(tiny_bert_dir, toy_cls_file, tmp_path):
    """`sparseft train --method sft` on a classifier: the new fp32 head reads bf16 activations,
    so the bf16 base computes under bf16 autocast (mixed_precision 'auto' follows base_dtype)."""
    import json

    from sparseft.cli.main import main

    assert TrainConfig(base_dtype="bf16").mixed_precision == "bf16"
    with pytest.raises(ValueError, match="mixed_precision must"):
        TrainConfig(base_dtype="bf16", mixed_precision="no")
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_bert_dir), "--task", "cls", "--train", str(toy_cls_file), "--epochs",
                 "1", "--no-cost", "--method", "sft", "--mask", "magnitude", "--density", "0.1", "--output-dir",
                 str(out), "--set", "base_dtype=bf16", "--set", "progress=false", "--set", "eval_every=never"]) == 0
    manifest = json.loads((out / "diff" / "manifest.json").read_text())
    assert manifest["train"]["_data"]["base_dtype"] == "bf16"


def test_base_dtype_casts_only_frozen_parameters():
    from sparseft.train.distributed import cast_frozen_

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)
    assert cast_frozen_(model, "bf16") == 2  # weight + bias of the frozen layer
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.float32
    assert cast_frozen_(model, "fp32") == 0

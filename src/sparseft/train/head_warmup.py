"""Head warm-up: train only the new task heads for a few steps (a linear probe, as in LP-FT,
Kumar et al. 2022) before sparse fine-tuning selects its mask, or before LoRA adds its adapter.

    sparseft train --method sft                      # the stage default: 300 steps when there is a head
    sparseft train --method lora --lora-head-warmup-steps 0          # off
    sparse_finetune(..., head_warmup_steps=300)      # the Python function does it only when asked

The `sft` and `lora` stages (CLI and recipes) warm up by default: `head_warmup_steps: null` means
HEAD_WARMUP_STEPS (300, at HEAD_WARMUP_LR 1e-3; train/defaults.py has the held-out measurement)
when the model has a task head, and 0 when it has none (a causal LM, chat SFT). An explicit
positive count on a model without a head is an error.

Why: a new classification head starts random, so the first gradients that reach the base
weights (which the fisher mask ranks, and which the first sparse steps follow) are projections
through a random matrix. After a short probe the head points at the task, and so do the
gradients the mask is chosen from.

The phase trains the `heads` parameters only (every other parameter frozen, so there is no
backward pass through the encoder: each step costs about one forward), with AdamW at a constant
`lr`, no weight decay, gradient clipping at 1.0 and the model in eval mode (no dropout: features
of the frozen base, as a linear probe sees them). The probed head is kept: it is where sparse
fine-tuning starts, and it is stored in the diff like any trained head. Memory is that of
inference plus the head's optimizer state, so sparse fine-tuning stays O(k).

Every process runs the same steps, the first `steps` *global* batches of the loop's epoch-0 order
(each the mean of the per-process batches' losses, as a data-parallel step averages them), so N
processes warm up the head exactly as one process with N times the batch, and the heads agree
without a broadcast. The probe is deterministic (eval mode, fixed batches), so a resumed run
repeats it and starts from the same head, which the loop's run identity checks.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Sequence

import torch

from sparseft.config.targets import TargetSpec, select_modules
from sparseft.masks.fisher import to_device
from sparseft.train.defaults import HEAD_WARMUP_STEPS
from sparseft.train.loop import selection_batches
from sparseft.utils.dist import local_device, world_size


def check_head_warmup(steps: int | None, lr: float) -> None:
    """The config fields' one-line errors (SFTConfig, LoRAStageConfig)."""
    if steps is not None and steps < 0:
        raise ValueError(f"head_warmup_steps must be >= 0, got {steps}")
    if lr <= 0:
        raise ValueError(f"head_warmup_lr must be > 0, got {lr}")


def warmup_steps(requested: int | None, head_params: dict) -> int:
    """The steps to run: `requested`, or (None) the default when there is a head to warm up."""
    if requested is None:
        return HEAD_WARMUP_STEPS if head_params else 0
    return requested


def warmup_steps_data(train_data: Sequence[dict], cfg, collate_fn, n: int) -> list[list[dict]]:
    """The first `n` global batches of the loop's order: per step, every process's batch."""
    world = world_size()
    shares = [selection_batches(train_data, cfg, collate_fn, n, r, world) for r in range(world)]
    return [list(step) for step in zip(*shares)]


def warm_up_heads_(model: torch.nn.Module, head_params: dict[str, torch.nn.Parameter],
                   steps: Iterable[Sequence[dict]], *, lr: float, loss_fn: Callable, device: torch.device) -> dict:
    """Train `head_params` in place, one AdamW step per entry of `steps` (a list of batches whose
    losses are averaged: `warmup_steps_data`); returns {"steps", "first_loss", "last_loss"}. Other
    parameters' `requires_grad` and the model's train/eval mode are restored afterwards."""
    if not head_params:
        raise ValueError("head warm-up: the model has no task head to warm up (heads match no module); "
                         "set head_warmup_steps=0")
    check_head_warmup(None, lr)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    head_ids = {id(p) for p in head_params.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head_ids)
    params = list(head_params.values())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    was_training = model.training
    model.eval()
    losses: list[float] = []
    try:
        for step in steps:
            loss = sum(loss_fn(model, to_device(batch, device)) for batch in step) / len(step)
            if not torch.isfinite(loss):
                raise RuntimeError(f"head warm-up diverged (loss {loss.item()}); lower head_warmup_lr ({lr})")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
        model.train(was_training)
    if not losses:
        raise ValueError("head warm-up: no training batches")
    print(f"head warm-up: {len(losses)} steps on {sum(p.numel() for p in params):,} head weights, "
          f"loss {losses[0]:.4f} -> {losses[-1]:.4f}", file=sys.stderr, flush=True)
    return {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}


def head_warmup_(model: torch.nn.Module, head_params: dict[str, torch.nn.Parameter], train_data: Sequence[dict],
                 cfg, collate_fn, *, steps: int, lr: float, loss_fn: Callable) -> dict | None:
    """The warm-up as the sft and lora stages run it: `steps` global batches of the loop's order,
    on this process's device (the model is moved there). None when `steps` is 0."""
    if not steps:
        return None
    model.to(local_device())
    stats = warm_up_heads_(model, head_params, warmup_steps_data(train_data, cfg, collate_fn, steps), lr=lr,
                           loss_fn=loss_fn, device=local_device())
    return {**stats, "lr": lr}


def dense_head_parameters(model: torch.nn.Module, heads: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """{param fqn: parameter} of every module matching the `heads` patterns (all its parameters)."""
    out: dict[str, torch.nn.Parameter] = {}
    if heads:
        for fqn, module in select_modules(model, TargetSpec(list(heads)), require_match=False):
            for pname, p in module.named_parameters():
                out[f"{fqn}.{pname}"] = p
    return out

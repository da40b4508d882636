"""`train_tasks`: the multi-task loop, L = sum_k L_k with one batch of every task per step.

    for step:
        for task k:  batch_k = sampler.next(k);  loss_k = CE(mt(k, batch_k)) -> backward   (grads add up)
        clip -> optimizer.step() -> scheduler -> zero_grad
        log {step, loss (= sum_k loss_k), loss_<k>} every log_every steps

Why not `sparseft.train.loop.train`: its loader draws one batch of one dataset per micro-step;
here a step needs a batch of every task, each through its own routing. Backward runs once per
task (the gradient of the sum, without keeping K graphs alive at once). The optimizer holds only
the value vectors and the heads (AdamW state O(sum_k k_k)); the backbone stays frozen.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import torch

from sparseft.experts.multitask import MultiTaskModel
from sparseft.experts.task_config import TaskExpertsConfig
from sparseft.experts.task_data import TaskSampler, planned_task_steps, task_accuracy, task_batch_sizes
from sparseft.train.schedules import linear_warmup_decay


def param_groups(mt: MultiTaskModel, cfg: TaskExpertsConfig) -> list[dict]:
    """AdamW groups: value vectors (lr, decayed), head matrices (head_lr, decayed), head biases /
    norms (head_lr, no decay)."""
    values, head_decay, head_plain = [], [], []
    for name, p in mt.trainable_parameters().items():
        if ".values." in name:
            values.append(p)
        elif p.ndim < 2 or "norm" in name.lower():
            head_plain.append(p)
        else:
            head_decay.append(p)
    head_lr = cfg.head_lr or cfg.lr
    groups = [{"params": values, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
              {"params": head_decay, "lr": head_lr, "weight_decay": cfg.weight_decay},
              {"params": head_plain, "lr": head_lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def evaluate_tasks(mt: MultiTaskModel, eval_data: Mapping[str, Sequence[dict]], collate_fn, *,
                   batch_size: int = 64) -> dict[str, float | None]:
    """{task: accuracy} of the multi-task model on each task's eval features."""
    was = mt.training
    mt.eval()
    device = next(mt.parameters()).device
    out = {t: task_accuracy(lambda b, _t=t: mt(_t, **_to(b, device)), feats, collate_fn, batch_size=batch_size)
           for t, feats in eval_data.items()}
    mt.train(was)
    return out


def train_tasks(mt: MultiTaskModel, train_data: Mapping[str, Sequence[dict]], cfg: TaskExpertsConfig, *,
                collate_fn, eval_data: Mapping[str, Sequence[dict]] | None = None,
                log: Callable[[dict], None] | None = None) -> dict:
    """Train every task's deltas and head together (see module docstring).

    Args:
        mt: from `build_task_experts` (or `from_indices`).
        train_data: {task: tokenized features}; every task of `mt` must have data.
        cfg: TaskExpertsConfig (sampling, steps / epochs, optimizer fields).
        collate_fn: pads a list of features into a batch (PadCollator).
        eval_data: {task: features}: accuracies after training (`eval` in the result).
        log: called with each logged record (e.g. print or a jsonl writer).

    Returns {"steps", "train_seconds", "batch_sizes", "passes", "history": [{step, loss,
    loss_<task>}], "first_losses", "last_losses", "eval"}.
    """
    missing = [t for t in mt.tasks if not train_data.get(t)]
    if missing:
        raise ValueError(f"no training data for task(s) {missing}")
    sizes = {t: len(train_data[t]) for t in mt.tasks}
    bsz = task_batch_sizes(sizes, cfg.batch_size, cfg.sampling, cfg.temperature)
    total = planned_task_steps(sizes, bsz, cfg.steps, cfg.epochs)
    sampler = TaskSampler(sizes, bsz, seed=cfg.seed)
    optimizer = torch.optim.AdamW(param_groups(mt, cfg), lr=cfg.lr)
    scheduler = linear_warmup_decay(optimizer, total, int(cfg.warmup_ratio * total))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device = params[0].device
    history: list[dict] = []
    window: dict[str, list[float]] = {t: [] for t in mt.tasks}
    torch.manual_seed(cfg.seed)           # dropout
    mt.train()
    t0 = time.perf_counter()
    for step in range(1, total + 1):
        picked = sampler.step()
        for task, idx in picked.items():
            batch = _to(collate_fn([train_data[task][i] for i in idx]), device)
            loss = mt.task_loss(task, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"task {task!r}: loss is {loss.item()} at step {step}")
            loss.backward()                   # grads of sum_k L_k accumulate task by task
            window[task].append(loss.item())
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % cfg.log_every == 0 or step == total or step == 1:
            rec = {"step": step, **{f"loss_{t}": sum(v) / len(v) for t, v in window.items()}}
            rec["loss"] = sum(rec[f"loss_{t}"] for t in mt.tasks)
            history.append(rec)
            window = {t: [] for t in mt.tasks}
            if log is not None:
                log(rec)
    seconds = time.perf_counter() - t0
    result = {"steps": total, "train_seconds": seconds, "batch_sizes": bsz, "passes": dict(sampler.passes),
              "history": history,
              "first_losses": {t: history[0][f"loss_{t}"] for t in mt.tasks},
              "last_losses": {t: history[-1][f"loss_{t}"] for t in mt.tasks}}
    if eval_data:
        result["eval"] = evaluate_tasks(mt, eval_data, collate_fn, batch_size=cfg.eval_batch_size)
    mt.eval()
    return result

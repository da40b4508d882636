"""Task-routed layers: per-task sparse deltas on one frozen weight, and per-task heads.

    TaskSparseDelta   base Linear W0 (frozen, shared) + for every task k its own flat positions
                      `indices[k]` [k_k] and fp32 deltas `values[k]` [k_k]; the forward of task
                      k computes x (W0 + scatter(indices[k], values[k]))^T + b: only task k's
                      delta is active (the others are not read at all).
    TaskHeads         {task: head module} in the slot of the model's head (`classifier`, ...);
                      the forward runs the active task's head only.

Routing is by task id, not per token: `MultiTaskModel.set_task_(k)` writes `active` into every
task-routed layer before a forward. The active task is an attribute of these modules (no global
state), so two models never interfere.

The gradient path is sparse fine-tuning's own (`sft.layer._SparseLinearFn`): the backward keeps
only the active task's k_k selected entries of the dense weight gradient, so gradients and
AdamW state are O(sum_k k_k), and the frozen W0 is never written.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparseft.sft.layer import _SparseLinearFn, merged


def _key(task: str) -> str:
    """ParameterDict / buffer-safe key of a task name ('sst2' -> 'sst2'; dots are not allowed)."""
    if not task or "." in task:
        raise ValueError(f"task name {task!r} must be non-empty and contain no '.'")
    return task


class TaskSparseDelta(nn.Module):
    """A frozen nn.Linear plus one sparse delta per task (see module docstring).

    Args:
        base: the nn.Linear to wrap (its weight must be frozen).
        indices: {task: flat int64 positions into base.weight, sorted and unique}; a task may be
            absent (its path is W0 here).
    """

    def __init__(self, base: nn.Linear, indices: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"TaskSparseDelta wraps nn.Linear, got {type(base).__name__}")
        if base.weight.requires_grad:
            raise ValueError("freeze the base weight before wrapping it (requires_grad=False)")
        self.base = base
        self.values = nn.ParameterDict()
        dev = base.weight.device
        for task, idx in indices.items():
            self.register_buffer(f"indices_{_key(task)}", idx.to(device=dev, dtype=torch.long))
            self.values[task] = nn.Parameter(torch.zeros(idx.numel(), dtype=torch.float32, device=dev))
        self.active: str | None = None
        self.acc_grad = None          # _SparseLinearFn's regrow slot; unused here

    @property
    def tasks(self) -> list[str]:
        return list(self.values.keys())

    def task_indices(self, task: str) -> torch.Tensor:
        return getattr(self, f"indices_{task}")

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    def task_weight(self, task: str) -> torch.Tensor:
        """W0 + task's delta as a new tensor (W0 itself if the task has no delta here)."""
        if task not in self.values:
            return self.base.weight
        return merged(self.base.weight, self.values[task], self.task_indices(task))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        task = self.active
        if task is None:
            raise RuntimeError("no active task: call MultiTaskModel.set_task_(name) (or pass task=) first")
        if task not in self.values:
            return self.base(x)
        values, idx = self.values[task], self.task_indices(task)
        if torch.is_grad_enabled() and values.requires_grad:
            return _SparseLinearFn.apply(x, self.base.weight, self.base.bias, values, idx, self)
        return F.linear(x, merged(self.base.weight, values, idx), self.base.bias)

    def extra_repr(self) -> str:
        n = self.base.weight.numel()
        return ", ".join(f"{t}: k={self.task_indices(t).numel()} ({self.task_indices(t).numel() / n:.3g})"
                         for t in self.tasks)


class TaskHeads(nn.Module):
    """One head module per task in the model's head slot; runs the active task's."""

    def __init__(self, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({_key(t): h for t, h in heads.items()})
        self.active: str | None = None

    def forward(self, *args, **kwargs):
        if self.active is None:
            raise RuntimeError("no active task: call MultiTaskModel.set_task_(name) (or pass task=) first")
        return self.heads[self.active](*args, **kwargs)


def task_routed(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """[(fqn, module)] of every TaskSparseDelta / TaskHeads in `model`."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (TaskSparseDelta, TaskHeads))]


def task_delta_layers(model: nn.Module) -> dict[str, TaskSparseDelta]:
    """{weight fqn in the plain model ('...query.weight'): layer} for every TaskSparseDelta."""
    return {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, TaskSparseDelta)}

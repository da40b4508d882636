"""Task data for task experts: per-task DataConfigs, task-balanced sampling, per-task accuracy.

Sampling (every optimizer step takes one batch from *every* task, so the step's loss is
L = sum_k L_k): `task_batch_sizes` splits the step's examples between the tasks,

    uniform        b_k = B                                   (round robin over all tasks)
    proportional   b_k = round(K B n_k / sum_j n_j)           (as if the tasks were pooled)
    temperature    b_k = round(K B n_k^(1/T) / sum_j n_j^(1/T))   (T = 1: proportional; large T: uniform)

with every b_k >= 1. `TaskSampler` draws each task's batches from its own seeded permutation,
reshuffled when a pass ends, so a small task repeats while a large one is still in its first
pass. Task data are built by `load_tasks` from a list of {name, train, eval, text_col,
label_col, ...} (every `sparseft.load.data.DataConfig` field plus `name`).
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence

import torch

from sparseft.load.data import DataConfig, TaskData, build_task_data


def task_batch_sizes(sizes: Mapping[str, int], batch_size: int, sampling: str = "uniform",
                     temperature: float = 1.0) -> dict[str, int]:
    """Examples per task per optimizer step (see module docstring)."""
    if not sizes:
        raise ValueError("no tasks")
    if any(n < 1 for n in sizes.values()):
        raise ValueError(f"every task needs training examples, got sizes {dict(sizes)}")
    if sampling == "uniform":
        return {t: batch_size for t in sizes}
    if sampling not in ("proportional", "temperature"):
        raise ValueError(f"sampling must be uniform, proportional or temperature, got {sampling!r}")
    alpha = 1.0 if sampling == "proportional" else 1.0 / temperature
    weights = {t: float(n) ** alpha for t, n in sizes.items()}
    total = sum(weights.values())
    step = batch_size * len(sizes)
    return {t: max(1, round(step * w / total)) for t, w in weights.items()}


class TaskSampler:
    """Per-task index batches: each task walks its own reshuffled passes (seeded)."""

    def __init__(self, sizes: Mapping[str, int], batch_sizes: Mapping[str, int], seed: int = 0) -> None:
        self.sizes, self.batch_sizes = dict(sizes), dict(batch_sizes)
        self._rng = {t: random.Random(f"{seed}:{t}") for t in self.sizes}
        self._order = {t: [] for t in self.sizes}
        self.passes = {t: 0 for t in self.sizes}

    def _refill(self, task: str) -> None:
        order = list(range(self.sizes[task]))
        self._rng[task].shuffle(order)
        self._order[task] += order
        self.passes[task] += 1

    def next(self, task: str) -> list[int]:
        """The next b_task indices of `task` (crossing into a new pass when needed)."""
        b = self.batch_sizes[task]
        while len(self._order[task]) < b:
            self._refill(task)
        out, self._order[task] = self._order[task][:b], self._order[task][b:]
        return out

    def step(self) -> dict[str, list[int]]:
        """One optimizer step's indices: {task: indices} for every task."""
        return {t: self.next(t) for t in self.sizes}


def planned_task_steps(sizes: Mapping[str, int], batch_sizes: Mapping[str, int], steps: int, epochs: float) -> int:
    """`steps`, or epochs x (all tasks' examples) / (examples per step)."""
    if steps:
        return steps
    return max(1, int(round(epochs * sum(sizes.values()) / sum(batch_sizes.values()))))


def task_data_configs(entries: Sequence[Mapping]) -> dict[str, DataConfig]:
    """{name: DataConfig (task 'cls')} from [{name, train, eval, text_col, label_col, ...}]."""
    out: dict[str, DataConfig] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise ValueError(f"tasks[{i}] must be a mapping with a 'name' (and DataConfig fields), got {entry!r}")
        fields = {k: v for k, v in entry.items() if k != "name"}
        fields.setdefault("task", "cls")
        if fields["task"] != "cls":
            raise ValueError(f"tasks[{i}] ({entry['name']}): task experts are sequence classification (task: cls)")
        name = str(entry["name"])
        if "." in name or name in out:
            raise ValueError(f"tasks[{i}]: task name {name!r} is repeated or contains '.'")
        try:
            out[name] = DataConfig.from_dict(fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tasks[{i}] ({name}): {exc}") from None
    if not out:
        raise ValueError("tasks is empty: give at least one {name, train, ...} entry")
    return out


def load_tasks(configs: Mapping[str, DataConfig], tokenizer) -> dict[str, TaskData]:
    """Read, split and tokenize every task's data ({name: TaskData})."""
    return {name: build_task_data(cfg, tokenizer) for name, cfg in configs.items()}


@torch.no_grad()
def task_accuracy(forward, features: Sequence[dict], collate_fn, *, batch_size: int = 64) -> float | None:
    """Accuracy of `forward(batch) -> logits` on tokenized features (None without features)."""
    if not features:
        return None
    correct = 0
    for i in range(0, len(features), batch_size):
        batch = collate_fn(list(features[i:i + batch_size]))
        labels = batch.pop("labels")
        logits = forward(batch)
        correct += int((logits.argmax(-1).cpu() == labels.view(-1)).sum())
    return correct / len(features)

"""Task experts on one backbone: per-task sparse diffs as experts, routed by task id.

    mt = build_task_experts(model, {"sst2": ["0", "1"], "ag": ["1", "2", "3", "4"]},
                            TaskExpertsConfig(density=0.01), batches={"sst2": [...], "ag": [...]})
    logits = mt("sst2", input_ids=..., attention_mask=...)     # only sst2's deltas and head run
    train_tasks(mt, {"sst2": feats, "ag": feats}, cfg, collate_fn=PadCollator(pad_id))  # L = sum_k L_k
    served = extract_task(mt, "ag")       # a plain AutoModelForSequenceClassification: W0 + diff_ag, ag's head

The model: one frozen transformers `...ForSequenceClassification` backbone W0 (shared by all
tasks). Task k owns (a) a mask M_k chosen by any registered mask method (random / magnitude /
fisher ...; fisher scores with task k's data and head), held as a SparseDelta-style value vector
on every targeted Linear (`TaskSparseDelta`), and (b) its own head (a copy of the model's head
module with k's label count, in a `TaskHeads` slot). A forward for a batch of task k activates
only k's deltas and head (task-level routing: `set_task_`). Task paths share W0 and nothing else,
so they cannot interfere; what they cost is the stored diffs: density x targeted weights each.

`extract_task` merges W0[M_k] += delta_k into a copy (`index_add_`, the same arithmetic the
forward uses, so the served model equals the multi-task model on task k) and puts k's head in
the slot: an ordinary PreTrainedModel that `save_pretrained` writes. Saving the multi-task
artifact (base reference + one sparse diff per task, with fingerprints) is in
`sparseft.export.task_experts` (save_task_experts / load_task_experts).
"""

from __future__ import annotations

import copy
import re
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparseft.config.targets import TargetSpec, select_modules
from sparseft.experts.task_config import TaskExpertsConfig
from sparseft.experts.task_layer import TaskHeads, TaskSparseDelta, task_delta_layers, task_routed


def _parent(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    parent, _, child = fqn.rpartition(".")
    return (model.get_submodule(parent) if parent else model), child


class MultiTaskModel(nn.Module):
    """A shared backbone with per-task sparse deltas and heads (see module docstring).

    Attributes:
        model: the transformers sequence-classification model, holding TaskSparseDelta layers
            and TaskHeads slots.
        tasks: {task: label list} in training order.
        head_slots: fqns of the TaskHeads slots (e.g. ["classifier"]).
    """

    def __init__(self, model: nn.Module, tasks: Mapping[str, Sequence[str]], head_slots: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.tasks = {t: list(labels) for t, labels in tasks.items()}
        self.head_slots = list(head_slots)

    @property
    def config(self):
        return self.model.config

    def set_task_(self, task: str) -> None:
        """Route every task layer to `task` (its deltas and its head)."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; tasks: {', '.join(self.tasks)}")
        for _, module in task_routed(self.model):
            module.active = task

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **inputs) -> torch.Tensor:
        """Logits [B, n_labels(task)] of `task` (labels in `inputs` are ignored: see `task_loss`)."""
        self.set_task_(task)
        inputs.pop("labels", None)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **inputs).logits

    def task_loss(self, task: str, batch: dict) -> torch.Tensor:
        """Mean cross-entropy of `task` on a collated batch (its own label count)."""
        logits = self(task, **{k: v for k, v in batch.items() if k != "labels"})
        return F.cross_entropy(logits.float(), batch["labels"].to(logits.device).view(-1))

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """{name: parameter} of every task's value vectors and heads (what training updates)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def task_parameter_count(self, task: str) -> dict[str, int]:
        """{"delta": entries of task's sparse deltas, "head": its head's parameters}."""
        delta = sum(layer.task_indices(task).numel() for layer in task_delta_layers(self.model).values()
                    if task in layer.values)
        head = sum(p.numel() for slot in self.head_slots
                   for p in self.model.get_submodule(slot).heads[task].parameters())
        return {"delta": int(delta), "head": int(head)}

    def base_tensors(self) -> dict[str, torch.Tensor]:
        """{plain parameter name: tensor} of the shared frozen backbone (no heads, no deltas)."""
        out: dict[str, torch.Tensor] = {}
        wrapped = {fqn for fqn, m in self.model.named_modules() if isinstance(m, TaskSparseDelta)}
        for name, p in self.model.named_parameters():
            if any(name == s or name.startswith(s + ".") for s in self.head_slots) or ".values." in name:
                continue
            module, _, pname = name.rpartition(".")
            if module.endswith(".base") and module[:-5] in wrapped:
                name = f"{module[:-5]}.{pname}"
            out[name] = p
        return out


# ---- building ---------------------------------------------------------------------------------

def head_slots(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Outermost modules matching the head patterns (e.g. 'classifier'), in model order."""
    found = [fqn for fqn, _ in select_modules(model, TargetSpec(list(patterns)), require_match=False)]
    slots = [f for f in found if not any(f.startswith(o + ".") for o in found if o != f)]
    if not slots:
        raise ValueError(f"the model has no head module matching {list(patterns)} (heads=...); "
                         f"load it as a sequence-classification model")
    return slots


def task_head(template: nn.Module, old_labels: int, n_labels: int, *, std: float, seed: int) -> nn.Module:
    """A copy of the head module with its output Linear (the last with `old_labels` outputs)
    replaced by a fresh one with `n_labels` outputs (normal(0, std) weights, zero bias)."""
    head = copy.deepcopy(template)
    outs = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear) and m.out_features == old_labels]
    if not outs:
        raise ValueError(f"head {type(template).__name__} has no Linear with {old_labels} outputs to resize")
    name, old = outs[-1]
    new = nn.Linear(old.in_features, n_labels, bias=old.bias is not None,
                    dtype=old.weight.dtype, device=old.weight.device)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        new.weight.copy_(torch.randn(new.weight.shape, generator=gen) * std)
        if new.bias is not None:
            new.bias.zero_()
    if not name:
        return new
    parent, child = _parent(head, name)
    setattr(parent, child, new)
    return head


def _install_heads(model: nn.Module, tasks: Mapping[str, Sequence[str]], patterns: Sequence[str],
                   seed: int) -> list[str]:
    slots = head_slots(model, patterns)
    old = int(getattr(model.config, "num_labels", 0) or 0)
    std = float(getattr(model.config, "initializer_range", 0.02))
    for slot in slots:
        template = model.get_submodule(slot)
        heads = {t: task_head(template, old, len(labels), std=std, seed=seed + 1000 * i)
                 for i, (t, labels) in enumerate(tasks.items())}
        parent, child = _parent(model, slot)
        setattr(parent, child, TaskHeads(heads))
    return slots


def _wrap(model: nn.Module, indices: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Swap each module named in {weight fqn: {task: idx}} for a TaskSparseDelta."""
    for name, per_task in indices.items():
        fqn = name.rpartition(".")[0]
        module = model.get_submodule(fqn)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"task experts tune nn.Linear weights; {fqn} is {type(module).__name__} "
                             f"(restrict the mask's targets, e.g. targets: [Linear])")
        module.weight.requires_grad_(False)
        parent, child = _parent(model, fqn)
        setattr(parent, child, TaskSparseDelta(module, {t: i for t, i in per_task.items() if i.numel()}))


def from_indices(model: nn.Module, tasks: Mapping[str, Sequence[str]],
                 indices: Mapping[str, Mapping[str, torch.Tensor]],
                 *, heads: Sequence[str] = ("classifier", "score"), seed: int = 0) -> MultiTaskModel:
    """A MultiTaskModel with given positions {weight fqn: {task: sorted flat idx}} (deltas 0).

    Used by `build_task_experts` after mask selection and by the loader (positions from the
    saved diffs). Freezes the backbone; value vectors and heads are trainable.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    slots = _install_heads(model, tasks, heads, seed) if not _has_heads(model) else _slots_of(model)
    _wrap(model, indices)
    mt = MultiTaskModel(model, tasks, slots)
    for slot in slots:
        for p in model.get_submodule(slot).parameters():
            p.requires_grad_(True)
    return mt


def _has_heads(model: nn.Module) -> bool:
    return any(isinstance(m, TaskHeads) for m in model.modules())


def _slots_of(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, TaskHeads)]


def build_task_experts(model: nn.Module, tasks: Mapping[str, Sequence[str]], cfg: TaskExpertsConfig, *,
                       batches: Mapping[str, Sequence[dict]] | None = None) -> MultiTaskModel:
    """Turn a sequence-classification `model` into a MultiTaskModel (in place; returns the wrapper).

    Args:
        model: a transformers ...ForSequenceClassification (any label count; the head is copied
            per task with each task's label count).
        tasks: {task: label list}; task names must not contain '.'.
        cfg: TaskExpertsConfig (mask method and budget, heads, seed).
        batches: {task: collated batches} for data-driven masks (fisher ...); `cfg.mask_config()`
            says how many each needs (`batches_needed()`).

    Example:
        >>> mt = build_task_experts(model, {"a": ["0", "1"]}, TaskExpertsConfig(density=0.05))  # doctest: +SKIP
    """
    from sparseft.masks.select import select_masks

    if not tasks:
        raise ValueError("task experts need at least one task")
    slots = _install_heads(model, tasks, cfg.heads, cfg.seed)
    for p in model.parameters():
        p.requires_grad_(True)     # fisher scores need gradients; frozen again by from_indices
    mt = MultiTaskModel(model, tasks, slots)
    indices: dict[str, dict[str, torch.Tensor]] = {}
    for i, task in enumerate(tasks):
        mcfg = cfg.mask_config(task_index=i, ignore_slots=[f"re:^{re.escape(s)}(\\.|$)" for s in slots])
        need = mcfg.batches_needed()
        task_batches = list((batches or {}).get(task, []))[:need] if need else None
        if need and not task_batches:
            raise ValueError(f"mask {cfg.mask!r} needs {need} training batches of task {task!r} (batches=...)")
        mt.set_task_(task)
        masks = select_masks(model, mcfg, batches=task_batches,
                             loss_fn=lambda m, b, _t=task: mt.task_loss(_t, b))
        for name, m in masks.items():
            idx = torch.nonzero(m.reshape(-1)).reshape(-1).cpu()
            indices.setdefault(name, {})[task] = idx
    model.zero_grad(set_to_none=True)
    return from_indices(model, tasks, indices, heads=cfg.heads, seed=cfg.seed)


# ---- serving one task ---------------------------------------------------------------------------

@torch.no_grad()
def extract_task(mt: MultiTaskModel, task: str):
    """Task `task`'s path as a plain model: W0 + its diff merged, its head, its labels.

    Returns a transformers PreTrainedModel (the backbone's ...ForSequenceClassification class)
    whose logits equal `mt(task, ...)`; `mt` is not changed.

    Example:
        >>> extract_task(mt, "sst2").save_pretrained("runs/sst2_model")    # doctest: +SKIP
    """
    if task not in mt.tasks:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(mt.tasks)}")
    model = copy.deepcopy(mt.model)
    for name, layer in task_delta_layers(model).items():
        base = layer.base
        if task in layer.values:       # the forward's arithmetic: W0.view(-1).index_add(idx, values)
            base.weight.view(-1).index_add_(0, layer.task_indices(task), layer.values[task].to(base.weight.dtype))
        parent, child = _parent(model, name.rpartition(".")[0])
        setattr(parent, child, base)
    for slot in mt.head_slots:
        parent, child = _parent(model, slot)
        setattr(parent, child, model.get_submodule(slot).heads[task])
    labels = mt.tasks[task]
    model.config.num_labels = len(labels)       # first: transformers rebuilds id2label on this
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    model.config.problem_type = "single_label_classification"
    for p in model.parameters():
        p.requires_grad_(True)
    return model

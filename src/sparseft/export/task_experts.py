"""The multi-task artifact: one base reference + one sparse diff (deltas + head) per task.

    runs/mt/
      task_experts.json     format, version, base_model (id or path), base_fingerprint over every
                            backbone tensor (sha256, export/fingerprint.py), tasks {name: {labels,
                            diff, count, head}}, head slots, the TaskExpertsConfig
      tasks/<name>/         an ordinary sparse diff folder (export/sparse_diff.py): the task's
                            indices / values / W0 at those positions, its head as dense tensors,
                            manifest with base_model, task 'cls' and labels
      base/                 only with save_base=True: the backbone itself (save_pretrained), for
                            bases that a plain load would not reproduce (a fresh pooler ...)

Stored size: W0 once (by reference, or in base/) plus sum_k (k_k deltas + k_k int32 indices +
k_k W0 values + head_k). Each `tasks/<name>` folder is a complete served model for its task:
`sparseft.load("runs/mt/tasks/sst2", task="cls")` = base + that diff = `extract_task(mt, "sst2")`.

`load_task_experts(dir)` loads the base (`base=` to pass one), checks the fingerprint over the
whole backbone (one error if any base tensor differs), rebuilds the MultiTaskModel with each
task's positions and sets its deltas and head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sparseft.experts.multitask import MultiTaskModel, from_indices
from sparseft.experts.task_layer import task_delta_layers
from sparseft.export.fingerprint import fingerprint_tensors
from sparseft.export.sparse_diff import SparseDiff, load_diff, save_diff
from sparseft.utils.io import atomic_write_json

FORMAT, FORMAT_VERSION = "sparseft.task_experts", 1
MANIFEST = "task_experts.json"


def task_diff(mt: MultiTaskModel, task: str, *, base_model: str = "") -> SparseDiff:
    """Task `task`'s path as a SparseDiff over the plain backbone's parameter names."""
    indices, values, base, shapes = {}, {}, {}, {}
    for name, layer in task_delta_layers(mt.model).items():
        if task not in layer.values:
            continue
        idx = layer.task_indices(task)
        order = torch.argsort(idx)
        indices[name] = idx[order].cpu()
        values[name] = layer.values[task].detach()[order].float().cpu()
        base[name] = layer.base.weight.detach().reshape(-1)[indices[name]].cpu()
        shapes[name] = tuple(layer.base.weight.shape)
    dense = {}
    for slot in mt.head_slots:
        head = mt.model.get_submodule(slot).heads[task]
        dense.update({f"{slot}.{n}": p.detach().cpu().clone() for n, p in head.state_dict().items()})
    names = sorted(indices)
    tensors = mt.base_tensors()
    manifest = {"base_model": base_model, "base_fingerprint": fingerprint_tensors(tensors, names) if names else None,
                "fingerprint_tensors": names, "task": "cls", "labels": list(mt.tasks[task]),
                "method": {"task_experts": task}, "heads": list(mt.head_slots),
                "targeted_params": sum(tensors[n].numel() for n in names)}
    diff = SparseDiff(indices, values, shapes, base, dense, manifest)
    diff.manifest["density"] = diff.count / max(1, manifest["targeted_params"])
    return diff


def save_task_experts(mt: MultiTaskModel, directory: str | Path, *, base_model: str = "", config=None,
                      save_base: bool = False, overwrite: bool = False) -> Path:
    """Write the multi-task artifact (see module docstring); returns the folder.

    Args:
        base_model: how to load the base again (hub id, alias or folder); default
            config._name_or_path. With save_base it becomes `<directory>/base`.
        config: the TaskExpertsConfig to record.
        save_base: also write the backbone (W0 and the first task's head) under base/.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if save_base:
        from sparseft.experts.multitask import extract_task

        plain = extract_task(mt, next(iter(mt.tasks)))
        with torch.no_grad():    # the base's own weights: undo that task's deltas
            for name, idx in task_diff(mt, next(iter(mt.tasks))).indices.items():
                plain.get_parameter(name).view(-1)[idx] = mt.base_tensors()[name].detach().reshape(-1)[idx]
        plain.save_pretrained(out / "base")
        base_model = str((out / "base").resolve())
    base_model = base_model or str(getattr(mt.config, "_name_or_path", ""))
    if not base_model:
        raise ValueError("save_task_experts: give base_model= (how to load the base) or save_base=True")
    tasks = {}
    for task, labels in mt.tasks.items():
        diff = task_diff(mt, task, base_model=base_model)
        save_diff(diff, out / "tasks" / task, overwrite=overwrite)
        tasks[task] = {"labels": labels, "diff": f"tasks/{task}", "count": diff.count,
                       "head": diff.dense_count}
    base = mt.base_tensors()
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "base_model": base_model,
                "base_fingerprint": fingerprint_tensors(base, base),
                "base_params": sum(t.numel() for t in base.values()),
                "tasks": tasks, "head_slots": list(mt.head_slots),
                "config": config.to_dict() if config is not None else None}
    atomic_write_json(out / MANIFEST, manifest)
    return out


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{directory}: no {MANIFEST} (not a task-experts folder)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT or int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')} is not "
                         f"{FORMAT} v<={FORMAT_VERSION}")
    return manifest


def load_task_experts(directory: str | Path, *, base=None) -> MultiTaskModel:
    """Rebuild the MultiTaskModel saved by `save_task_experts`.

    Args:
        base: the base ...ForSequenceClassification model to use (default: load the manifest's
            base_model with the first task's labels). Its backbone must have the saved fingerprint.

    Example:
        >>> mt = load_task_experts("runs/mt")                            # doctest: +SKIP
    """
    from sparseft.load.model import load_model

    out = Path(directory)
    manifest = read_manifest(out)
    tasks = {t: list(e["labels"]) for t, e in manifest["tasks"].items()}
    diffs = {t: load_diff(out / e["diff"]) for t, e in manifest["tasks"].items()}
    model = base if base is not None else load_model(manifest["base_model"], "cls", labels=next(iter(tasks.values())))
    indices: dict[str, dict[str, torch.Tensor]] = {}
    for task, diff in diffs.items():
        for name, idx in diff.indices.items():
            indices.setdefault(name, {})[task] = idx
    mt = from_indices(model, tasks, indices, heads=manifest["head_slots"])
    base_tensors = mt.base_tensors()
    if fingerprint_tensors(base_tensors, base_tensors) != manifest["base_fingerprint"]:
        raise ValueError(f"{out}: the base model's weights differ from the base these task experts were trained "
                         f"on (fingerprint mismatch; base_model={manifest['base_model']!r}); save with "
                         f"save_base=True or pass base= the right model")
    layers = task_delta_layers(mt.model)
    with torch.no_grad():
        for task, diff in diffs.items():
            for name, values in diff.values.items():
                layer = layers[name]
                if not torch.equal(layer.task_indices(task).cpu(), diff.indices[name]):
                    raise ValueError(f"{out / manifest['tasks'][task]['diff']}: {name} positions are not sorted")
                layer.values[task].copy_(values)
            for slot in mt.head_slots:
                head = mt.model.get_submodule(slot).heads[task]
                state = {n[len(slot) + 1:]: t for n, t in diff.dense.items() if n.startswith(slot + ".")}
                head.load_state_dict(state)
    return mt.eval()

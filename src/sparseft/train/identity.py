"""Run identity: what a run folder was trained from, so that resume never continues the wrong run.

Every checkpoint's `state.json` records

    model   id (alias / folder / hub id, informational) plus two weight fingerprints taken when
            training starts: `frozen` (parameters with requires_grad=False: the base that lean
            checkpoints do not copy) and `trainable` (trainable parameters and buffers at the
            start: another model, another head initialisation or another mask changes it);
    data    the number of training examples, a sha256 over the tokenized training features and,
            when the caller names them, each data file's path, size and sha256 (streamed);
    config  the full config (TrainConfig plus whatever the stage adds: mask, mode, data config).

Resuming (`resume=True` and a checkpoint exists) requires the same identity; a difference raises
`ResumeMismatch` (a ValueError: one line in the CLI) naming what differs, with the way out
(`--no-resume` / `resume: false`, or another output folder). Equal content counts as equal:
moved or renamed data files and another spelling of the model id are fine. Config fields that
cannot change the trained weights (`IGNORED_KEYS`: output folder, logging, checkpoint
frequency, the resume flag itself) are not compared.

Cost: one pass of sha256 over the model weights (memory speed, e.g. ~0.5 s for 135M fp32
parameters) and over each data file, once per `train()` call.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

IGNORED_KEYS = frozenset({"output_dir", "resume", "progress", "log_every", "save_every", "diff_dir",
                          "adapter_dir"})
_CHUNK = 1 << 22  # 4 MiB reads when hashing files


class ResumeMismatch(ValueError):
    """The run folder holds a run trained from another model, data or config."""


def hash_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """'sha256:<hex>' over name, dtype, shape and raw bytes of each tensor, in sorted name order
    (the scheme of `sparseft.export.fingerprint`, restated here: train/ sits below export/)."""
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda item: item[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + h.hexdigest()


def model_identity(model: torch.nn.Module, model_id: str = "") -> dict:
    """{"id", "frozen", "frozen_tensors", "trainable", "trainable_tensors"} (module docstring)."""
    params = list(model.named_parameters())
    frozen = [(n, p) for n, p in params if not p.requires_grad]
    trainable = [(n, p) for n, p in params if p.requires_grad] + list(model.named_buffers())
    model_id = model_id or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    return {"id": model_id, "frozen": hash_tensors(frozen), "frozen_tensors": len(frozen),
            "trainable": hash_tensors(trainable), "trainable_tensors": len(trainable)}


def file_fingerprint(path: str | Path) -> dict:
    """{"path", "size", "sha256"} of a data file (read in 4 MiB chunks)."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": h.hexdigest()}


def features_fingerprint(features: Sequence[dict]) -> str:
    """sha256 over tokenized examples (every key, in order); int lists hash as int64 arrays."""
    h = hashlib.sha256()
    for example in features:
        for key in sorted(example):
            value = example[key]
            h.update(f"{key}=".encode())
            if isinstance(value, torch.Tensor):
                h.update(hash_tensors([("", value)]).encode())
            else:
                try:
                    h.update(array("q", value).tobytes())
                except (TypeError, OverflowError):
                    h.update(repr(value).encode())
            h.update(b"\x1f")
        h.update(b"\x1e")
    return "sha256:" + h.hexdigest()


def run_inputs(model_id: str = "", files: dict[str, str] | None = None, config: dict | None = None) -> dict:
    """What a stage knows beyond the loop's arguments: the model id, data files by role
    ({"train": path, "eval": path}; empty paths are skipped) and its full config sections."""
    return {"model_id": model_id,
            "files": {role: file_fingerprint(p) for role, p in (files or {}).items() if p},
            "config": dict(config or {})}


def recipe_inputs(recipe, stage_config, files: dict[str, str] | None = None) -> dict:
    """`run_inputs` for a recipe stage: the recipe's model id, its data files (or `files`), the
    stage's full config and the recipe's data config (file paths left out: content decides)."""
    data = recipe.data.to_dict()
    data["_data"] = {k: v for k, v in data["_data"].items() if k not in ("train", "eval")}
    if files is None:
        files = {"train": recipe.data.train, "eval": recipe.data.eval}
    return run_inputs(recipe.model, files, {"stage": stage_config.to_dict(), "data": data})


def build_identity(model: torch.nn.Module | None, train_data: Sequence[dict], train_config: dict,
                   inputs: dict | None = None) -> dict:
    """The identity recorded with every checkpoint; without `model` the model part is left out
    (for checks made before the model is ready, e.g. before sparse fine-tuning reuses masks)."""
    inputs = inputs or {}
    identity: dict[str, Any] = {
        "data": {"examples": len(train_data), "features": features_fingerprint(train_data),
                 "files": inputs.get("files", {})},
        "config": {"train": train_config, **inputs.get("config", {})}}
    if model is not None:
        identity["model"] = model_identity(model, inputs.get("model_id", ""))
    return json.loads(json.dumps(identity, default=str))  # as a checkpoint's state.json reads back


def identity_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two identities (sections of `current` only)."""
    out: list[str] = []
    if "model" in current:
        out += _model_differences(saved.get("model") or {}, current["model"])
    if "data" in current:
        out += _data_differences(saved.get("data") or {}, current["data"])
    if "config" in current:
        old, new = _flatten(saved.get("config") or {}), _flatten(current["config"])
        seen = set()
        for key in sorted(set(old) | set(new)):
            if key.rpartition(".")[2] in IGNORED_KEYS or old.get(key) == new.get(key):
                continue
            short = (key.rpartition(".")[2], repr(old.get(key)), repr(new.get(key)))
            if short not in seen:  # the same field may appear in two sections (train, stage)
                seen.add(short)
                out.append(f"config {key}: {_show(old.get(key))} -> {_show(new.get(key))}")
    return out


def check_resume(saved: dict | None, current: dict, where: str | Path) -> None:
    """Raise ResumeMismatch unless `saved` (from a checkpoint) matches `current`."""
    way_out = "train afresh with --no-resume (resume: false) or use another output folder"
    if not saved:
        raise ResumeMismatch(f"cannot resume from {where}: the checkpoint records no run identity "
                             f"(written by an older sparseft), so it cannot be checked; {way_out}")
    diffs = identity_differences(saved, current)
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ResumeMismatch(f"cannot resume from {where}: this run differs from the one saved there in "
                             f"{'; '.join(diffs[:3])}{more}; {way_out}")


def _model_differences(old: dict, new: dict) -> list[str]:
    label = new.get("id") or "model"
    if old.get("id") and old.get("id") != new.get("id"):
        label = f"{old['id']} -> {new.get('id') or '?'}"
    out = []
    if old.get("frozen") != new.get("frozen") or old.get("frozen_tensors") != new.get("frozen_tensors"):
        out.append(f"model ({label}): frozen base weights differ "
                   f"({_short(old.get('frozen'))} -> {_short(new.get('frozen'))})")
    if old.get("trainable") != new.get("trainable") or old.get("trainable_tensors") != new.get("trainable_tensors"):
        out.append(f"model ({label}): initial trainable weights differ (another model, head "
                   f"initialisation, seed or mask)")
    return out


def _data_differences(old: dict, new: dict) -> list[str]:
    out = []
    old_files, new_files = old.get("files") or {}, new.get("files") or {}
    # files are compared when both runs named them (a Python-API call may name none: the
    # tokenized features then decide alone)
    for role in sorted(set(old_files) | set(new_files)) if old_files and new_files else ():
        a, b = old_files.get(role), new_files.get(role)
        if a and b and (a.get("size"), a.get("sha256")) == (b.get("size"), b.get("sha256")):
            continue
        out.append(f"{role} data file: {_describe_file(a)} -> {_describe_file(b)}")
    if not out and (old.get("features"), old.get("examples")) != (new.get("features"), new.get("examples")):
        out.append(f"training data: {old.get('examples')} -> {new.get('examples')} examples, tokenized "
                   f"features {_short(old.get('features'))} -> {_short(new.get('features'))}")
    return out


def _describe_file(f: dict | None) -> str:
    if not f:
        return "none"
    return f"{f.get('path')} ({f.get('size')} bytes, sha256 {str(f.get('sha256'))[:12]})"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": leaf}; BaseConfig's {"_type", "_data"} wrapping folds into its parent key."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key == "_version":
            continue
        path = prefix if key == "_data" else (f"{prefix}.{key}" if prefix else str(key))
        out.update(_flatten(value, path))
    return out


def _short(fp: Any) -> str:
    return str(fp)[:19] if fp else "none"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

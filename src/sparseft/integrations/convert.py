"""Convert between a sparseft diff folder and a peft adapter folder (peft type SPARSEFT), both ways.

    diff_to_adapter("runs/sft/diff", "runs/sft/adapter")          # then PeftModel.from_pretrained(base, ...)
    diff = adapter_to_diff("runs/sft/adapter", base_model=base)    # then save_diff / apply_diff_ / compose

The two formats hold the same information, laid out for their tools:

    diff folder (export/sparse_diff.py)          adapter folder (peft)
    NAME::indices  (sorted, int32/int64)   <->   base_model.model.MODULE.sparseft_indices (int64)
    NAME::values   (fp32)                  <->   base_model.model.MODULE.sparseft_values  (fp32)
    NAME::dense    (new heads)             <->   base_model.model.NAME  (peft's modules_to_save)
    NAME::base     (W0 at the positions)         not stored: peft adapters carry no base weights
    manifest.json  (fingerprint, method, ...)    adapter_config.json (the same fingerprint, shapes)

NAME is a module's weight ("...query.weight", MODULE "...query"). The adapter has no W0 values,
so `adapter_to_diff` fills them from `base_model` when it is given (after checking the base
fingerprint); without it the diff has no base values (revert then subtracts the deltas, and the
base check relies on the fingerprint alone). Adapters trained with drop/regrow may hold unsorted
indices; the diff sorts them, together with their values.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sparseft.export.fingerprint import fingerprint
from sparseft.export.model_card import python_snippet, write_model_card
from sparseft.export.sparse_diff import BaseMismatch, SparseDiff, load_diff
from sparseft.integrations.peft_config import PEFT_TYPE, SparseFTConfig
from sparseft.masks.config import MaskConfig
from sparseft.utils.outdir import replace_dir

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."
_TASK_TYPES = {"ner": "TOKEN_CLS", "cls": "SEQ_CLS", "lm": "CAUSAL_LM"}
_TASKS = {v: k for k, v in _TASK_TYPES.items()}
_AUTO_CLASSES = {"TOKEN_CLS": "AutoModelForTokenClassification", "SEQ_CLS": "AutoModelForSequenceClassification",
                 "CAUSAL_LM": "AutoModelForCausalLM"}
_BASE_FIELDS = {"density", "count", "match_lora_rank", "allocation", "targets", "ignore"}


def _module_of(name: str) -> str:
    module, _, pname = name.rpartition(".")
    if pname != "weight" or not module:
        raise ValueError(f"peft sparse adapters hold module weights; the diff changes {name!r}")
    return module


def _mask_fields(manifest: dict) -> dict:
    """mask name + extra options from a diff manifest's method config (default: magnitude)."""
    method, name = manifest.get("method") or {}, manifest.get("mask")
    data = method.get("_data", {}) if isinstance(method, dict) else {}
    from sparseft.registry import REGISTRY

    if not name or name not in REGISTRY.names("mask"):
        return {"mask": "magnitude", "mask_options": {}}
    return {"mask": name, "mask_options": {k: v for k, v in data.items() if k not in _BASE_FIELDS}}


def diff_to_adapter(diff: SparseDiff | str | Path, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Write `diff` (or the diff folder at that path) as a peft adapter folder.

    Args:
        diff: a SparseDiff or a diff folder.
        directory: the adapter folder to create (an existing non-empty folder needs `overwrite`).

    Example:
        >>> diff_to_adapter("runs/sft/diff", "runs/sft/adapter")                        # doctest: +SKIP
        >>> PeftModel.from_pretrained(base, "runs/sft/adapter").merge_and_unload()      # doctest: +SKIP
    """
    source = None if isinstance(diff, SparseDiff) else diff
    diff = diff if isinstance(diff, SparseDiff) else load_diff(diff)
    directory = Path(directory)
    if not diff.indices:
        raise ValueError("the diff has no sparse entries: nothing for a sparse adapter to hold")
    m = diff.manifest
    tensors: dict[str, torch.Tensor] = {}
    for name, idx in diff.indices.items():
        module = _module_of(name)
        tensors[f"{_PREFIX}{module}.sparseft_indices"] = idx.to(torch.int64).contiguous()
        tensors[f"{_PREFIX}{module}.sparseft_values"] = diff.values[name].float().contiguous()
    for name, t in diff.dense.items():
        tensors[f"{_PREFIX}{name}"] = t.detach().contiguous()
    heads = sorted({name.rpartition(".")[0] for name in diff.dense})
    base_dtype = next((str(t.dtype).removeprefix("torch.") for t in diff.base_values.values()), None)
    config = SparseFTConfig(
        count=diff.count, **_mask_fields(m), target_modules=sorted(_module_of(n) for n in diff.indices),
        modules_to_save=heads or None, task_type=_TASK_TYPES.get(m.get("task")),
        base_model_name_or_path=m.get("base_model") or None, revision=m.get("base_revision"),
        base_fingerprint=m.get("base_fingerprint"), fingerprint_tensors=m.get("fingerprint_tensors"),
        base_dtype=base_dtype, shapes={n: list(s) for n, s in diff.shapes.items()}, labels=m.get("labels"),
        inference_mode=True)
    # a non-empty folder sparseft did not write needs `overwrite`; the input diff is never replaced
    with replace_dir(directory, owner="diff to-adapter", overwrite=overwrite, inputs=[source]) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        write_adapter_card(tmp, config, metrics=m.get("metrics"), load_path=str(directory))
    return directory


def adapter_to_diff(adapter: str | Path, *, base_model: torch.nn.Module | None = None) -> SparseDiff:
    """Read a SPARSEFT peft adapter folder as a SparseDiff (see the module docstring).

    Args:
        adapter: the adapter folder (`save_pretrained` of a SparseFTConfig model, or `diff_to_adapter`).
        base_model: the plain base model; when given, its fingerprint is checked and the diff gets
            the W0 values at its positions (exact revert), and the shapes and labels.

    Example:
        >>> save_diff(adapter_to_diff("runs/adapter", base_model=base), "runs/diff")   # doctest: +SKIP
    """
    adapter = Path(adapter)
    cfg_path = adapter / ADAPTER_CONFIG
    if not cfg_path.exists():
        raise FileNotFoundError(f"{adapter} is not a peft adapter folder (no {ADAPTER_CONFIG})")
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type") != PEFT_TYPE:
        raise ValueError(f"{cfg_path}: peft_type {config.get('peft_type')!r} is not a sparseft adapter ({PEFT_TYPE})")
    raw = load_file(str(adapter / ADAPTER_WEIGHTS))
    indices, values, dense = {}, {}, {}
    for key, t in raw.items():
        name = key.removeprefix(_PREFIX)
        if name.endswith(".sparseft_indices"):
            module = name.removesuffix(".sparseft_indices")
            vkey = f"{_PREFIX}{module}.sparseft_values"
            if vkey not in raw:
                raise ValueError(f"{adapter / ADAPTER_WEIGHTS}: {key} has no matching {vkey}")
            order = torch.argsort(t.long())
            indices[f"{module}.weight"] = t.long()[order]
            values[f"{module}.weight"] = raw[vkey].float()[order]
        elif not name.endswith(".sparseft_values"):
            dense[name] = t
    shapes, base_values, labels = _base_info(config, indices, dense, base_model, adapter)
    mask_cfg = _mask_config(config)
    targeted = sum(int(torch.Size(s).numel()) for n, s in (config.get("shapes") or {}).items()) or \
        sum(int(torch.Size(s).numel()) for s in shapes.values())
    count = sum(int(i.numel()) for i in indices.values())
    manifest = {"base_model": config.get("base_model_name_or_path") or "", "base_revision": config.get("revision"),
                "base_fingerprint": config.get("base_fingerprint"),
                "fingerprint_tensors": config.get("fingerprint_tensors"),
                "method": mask_cfg.to_dict() if mask_cfg else None, "mask": config.get("mask"),
                "task": _TASKS.get(config.get("task_type")), "heads": config.get("modules_to_save") or [],
                "density": count / targeted if targeted else None, "converted_from": "peft adapter"}
    labels = labels or config.get("labels")
    if labels:
        manifest["labels"] = labels
    return SparseDiff(indices, values, shapes, base_values, dense, manifest)


def _mask_config(config: dict) -> MaskConfig | None:
    from sparseft.masks.select import mask_config

    fields = {k: config.get(k) for k in ("density", "count", "match_lora_rank", "allocation") if config.get(k)}
    try:
        return mask_config(config.get("mask") or "magnitude", **fields, **(config.get("mask_options") or {}))
    except ValueError:
        return None


def _base_info(config: dict, indices: dict, dense: dict, base_model, adapter: Path):
    """(shapes, base values, labels) from the base model if given, else shapes from the config."""
    if base_model is None:
        shapes = {n: tuple((config.get("shapes") or {}).get(n, ())) for n in indices}
        missing = [n for n, s in shapes.items() if not s]
        if missing:
            raise ValueError(f"{adapter / ADAPTER_CONFIG} records no shape for {missing[:3]}; pass base_model=")
        return shapes, {}, None
    params = dict(base_model.named_parameters())
    missing = sorted(n for n in [*indices, *dense] if n not in params)
    if missing:
        raise ValueError(f"the base model has no parameter(s) {missing[:3]} that the adapter changes")
    names = config.get("fingerprint_tensors") or []
    if config.get("base_fingerprint") and names and fingerprint(base_model, names) != config["base_fingerprint"]:
        raise BaseMismatch(f"{adapter}: base_model is not the base this adapter was trained on (fingerprint differs)")
    shapes = {n: tuple(params[n].shape) for n in indices}
    base_values = {n: params[n].detach().reshape(-1)[i.to(params[n].device)].cpu().clone() for n, i in indices.items()}
    id2label = getattr(getattr(base_model, "config", None), "id2label", None)
    labels = [id2label[i] for i in sorted(id2label)] if id2label and _TASKS.get(config.get("task_type")) in (
        "ner", "cls") else None
    return shapes, base_values, labels


def write_adapter_card(directory: str | Path, config: SparseFTConfig, *, metrics: dict | None = None,
                       load_path: str | None = None) -> Path:
    """README.md model card for a SPARSEFT adapter folder (library_name: peft).

    Args:
        load_path: the folder or hub id shown in the loading snippet (default: `directory`).
    """
    auto = _AUTO_CLASSES.get(config.task_type, "AutoModel")
    base = config.base_model_name_or_path or "BASE_MODEL"
    code = (f"import sparseft.integrations  # registers the peft method 'sparseft'\n"
            f"from peft import PeftModel\n"
            f"from transformers import {auto}\n\n"
            f"base = {auto}.from_pretrained({base!r})  # the base it was trained on\n"
            f"model = PeftModel.from_pretrained(base, {str(load_path or directory)!r})\n"
            f"merged = model.merge_and_unload()  # a plain transformers model again")
    return write_model_card(
        directory, kind="sparse-adapter", library_name="peft", base_model=config.base_model_name_or_path,
        task=_TASKS.get(config.task_type), metrics=metrics, tags=["peft", "sparse-fine-tuning"],
        how_to_load=python_snippet(code),
        extra={"method": f"sparse fine-tuning, mask {config.mask}", "allocation": config.allocation,
               "base fingerprint": config.base_fingerprint or "-"})

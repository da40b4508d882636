"""Recognise what kind of artifact a model folder is, and load each kind the right way.

Every verb that takes a model (`sparseft eval DIR`, `chat DIR`, `train --model DIR`, `prune`,
`quantize`, `export`, `model: DIR` in a recipe, `sparseft.load`) goes through `load_model`
(load/model.py), which asks `artifact_kind(name)` first:

  kind                 how it is recognised                       how it is loaded
  "sparse-diff"        manifest.json (format sparseft.sparse_diff)  the base named in the manifest
                       + diff.safetensors                           is loaded, then the diff applied
                                                                    (fingerprint-checked)
  "peft-adapter"       adapter_config.json                          the base named in it is loaded,
                                                                    the adapter merged (peft)
  "compressed"         compression_config.json                      `load_compressed` (any layout)
  "sparseft-modules"   config.json quantization_config              `from_pretrained`: sparseft's
                       {"quant_method": "sparseft"}                 quantizer rebuilds the modules
  "compressed-tensors" config.json quant_method compressed-tensors  `from_pretrained` (package needed)
  "gguf"               a .gguf file (or a folder holding one)       `from_pretrained(gguf_file=)`,
                                                                    dequantized to fp32
  "model"              anything else: a save_pretrained folder,     `from_pretrained`
                       an alias or a hub id

The first three are loaded here (`load_artifact`); the others by `load_model` itself, which also
refuses checkpoints with missing tensors. Readers of the special formats live with their writers
in `sparseft.export` and are imported only when such a folder is loaded: the one place where this
floor reaches up, because "load whatever this folder is" has to know every format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

SPECIAL = ("sparse-diff", "peft-adapter", "compressed")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt")
_TASK_CLASS = {"ner": "ForTokenClassification", "cls": "ForSequenceClassification", "lm": "ForCausalLM"}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); the file is truncated or corrupt") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def artifact_kind(name: str) -> str:
    """One of the kinds in the module docstring (file inspection only; nothing is loaded)."""
    path = Path(name)
    if path.is_file():
        return "gguf" if path.suffix == ".gguf" else "model"
    if not path.is_dir():
        return "model"  # alias or hub id
    if (path / "manifest.json").is_file() and (path / "diff.safetensors").exists():
        return "sparse-diff"
    if (path / "adapter_config.json").is_file():
        return "peft-adapter"
    if (path / "compression_config.json").is_file():
        return "compressed"
    if (path / "config.json").is_file():
        qc = _read_json(path / "config.json").get("quantization_config") or {}
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        if method == "sparseft":
            if qc.get("layout") == "compressed":
                raise ValueError(f"{path}: config.json marks a sparseft compressed checkpoint but "
                                 f"compression_config.json is missing; the folder is incomplete")
            return "sparseft-modules"
        if method == "compressed-tensors":
            return "compressed-tensors"
        return "model"
    return "gguf" if list(path.glob("*.gguf")) else "model"


def base_of(name: str) -> str | None:
    """The base model a diff or adapter folder names (None for other kinds)."""
    kind, path = artifact_kind(name), Path(name)
    if kind == "sparse-diff":
        base = _read_json(path / "manifest.json").get("base_model")
    elif kind == "peft-adapter":
        base = _read_json(path / "adapter_config.json").get("base_model_name_or_path")
    else:
        return None
    if not base:
        raise ValueError(f"{path}: the {kind} folder does not name its base model "
                         f"({'manifest.json base_model' if kind == 'sparse-diff' else 'adapter_config.json'}); "
                         f"load the base yourself and apply it")
    return str(base)


def tokenizer_source(name: str) -> str:
    """Where the tokenizer of `name` lives: the folder itself, or the base of a diff / adapter."""
    path = Path(name)
    if artifact_kind(name) in ("sparse-diff", "peft-adapter") and not any((path / f).exists() for f in TOKENIZER_FILES):
        return base_of(name)
    return name


def _check_task(name: str, model, task: str, labels: Sequence[str] | None) -> None:
    arch = type(model).__name__
    if not arch.endswith(_TASK_CLASS[task]):
        raise ValueError(f"{name} holds a {arch}, not a model for task {task!r} ({_TASK_CLASS[task]})")
    if task != "lm" and labels:
        id2label = model.config.id2label
        have = [id2label[i] for i in sorted(id2label)]
        if have != list(labels):
            raise ValueError(f"{name} predicts labels {have}; the data has {list(labels)} "
                             f"(a compressed checkpoint cannot get a new head)")


def _load_base(name: str, base: str, kind: str, task: str, labels, **kwargs):
    from sparseft.load.model import load_model

    try:
        return load_model(base, task, labels=labels, **kwargs)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{name} is a {kind}; its base model {base!r} could not be loaded: {exc}") from None


def load_artifact(name: str, task: str, *, labels: Sequence[str] | None = None, dtype=None,
                  trust_remote_code: bool = False):
    """Load a 'sparse-diff', 'peft-adapter' or 'compressed' folder as a model for `task`."""
    kind, path = artifact_kind(name), Path(name)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if kind == "compressed":
        from sparseft.export.compressed import load_compressed

        model = load_compressed(path)
        if dtype is not None:
            model = model.to(dtype)
        _check_task(name, model, task, labels)
        return model
    if kind == "sparse-diff":
        from sparseft.export.sparse_diff import apply_diff_, load_diff

        manifest = _read_json(path / "manifest.json")
        if manifest.get("task") and manifest["task"] != task:
            raise ValueError(f"{name} is a sparse diff for task {manifest['task']!r}, not {task!r}")
        diff = load_diff(path)
        model = _load_base(name, base_of(name), kind, task, labels or manifest.get("labels"), **kwargs)
        apply_diff_(model, diff)  # refuses a base with another fingerprint (BaseMismatch, a ValueError)
        return model
    if kind == "peft-adapter":
        try:
            from peft import PeftModel
        except ImportError:
            raise ValueError(f"{name} is a peft adapter folder: loading it needs peft (pip install peft)") from None
        adapter = _read_json(path / "adapter_config.json")
        if str(adapter.get("peft_type", "")).lower() == "sparseft":
            import sparseft.integrations  # noqa: F401  registers the "sparseft" peft method
        model = _load_base(name, base_of(name), kind, task, labels, **kwargs)
        return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    raise ValueError(f"{name}: {kind!r} folders are loaded by load_model, not load_artifact")


def check_loading_info(name: str, model, info: dict, *, new_head: bool) -> None:
    """Refuse a checkpoint whose tensors are missing (or mis-shaped) instead of letting
    transformers initialise them at random. `new_head`: the caller asked for new labels, so the
    task head (everything outside the base model, plus a BERT pooler) may be fresh."""
    prefix = getattr(model, "base_model_prefix", "") or ""

    def is_head(key: str) -> bool:
        return not (prefix and key.startswith(f"{prefix}.")) or key.startswith(f"{prefix}.pooler.")

    missing = set(info.get("missing_keys") or ())
    missing |= {m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys") or ()}
    bad = sorted(k for k in missing if not (new_head and is_head(k)))
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        why = "" if new_head else " (a fresh task head is only made for new labels)"
        raise ValueError(f"{name}: the checkpoint lacks {len(bad)} tensors that would be randomly initialised{why}: "
                         f"{shown}")


def finish_loaded(model):
    """Make a model fresh from `from_pretrained` fit for every verb (train, prune, save ...).

    * GGUF: the weights were dequantized to fp32 on load, but the attached GGUF quantizer makes
      `save_pretrained` refuse ("quantized with gguf and is not serializable"): detach it
      (`remove_quantization_config`, transformers' own way).
    * a folder saved while sparse fine-tuning wrappers were in place comes back wrapped: merge
      them (W0 + delta), and detach sparseft's quantizer when no swapped module is left.
    * a folder saved with sparse attention (config.json `sparseft_attention`): re-enable it.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    method = getattr(method, "value", method)
    if method == "gguf":
        quantizer.remove_quantization_config(model)
    elif method == "sparseft":
        from sparseft.sft.layer import merge_sparse_, sparse_layers
        from sparseft.utils.swaps import swapped_modules

        if sparse_layers(model):
            merge_sparse_(model)
        if not swapped_modules(model):
            quantizer.remove_quantization_config(model)
    if getattr(model.config, "sparseft_attention", None):  # saved with sparse attention: switch it back on
        from sparseft.attention.apply import restore_attention_

        restore_attention_(model)
    return model

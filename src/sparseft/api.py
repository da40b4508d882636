"""`load` and `export`: the two top-level verbs that dispatch on what they are given.

    model = sparseft.load("minilm", task="ner", labels=["O", "B-PER", "I-PER"])
    model = sparseft.load("runs/sft/diff")              # a diff folder: its base + the diff applied
    model = sparseft.load("runs/sft/adapter")           # a sparse peft adapter: base + merged adapter
    sparseft.export(model, "out/model")                 # save_pretrained folder (+ model card)
    sparseft.export(model, "out/small", format="compressed")

`load` is `sparseft.load.model.load_model` (which recognises diff, adapter and compressed
folders: docs/artifacts.md) plus the task read from the folder when not given, the head labels a
sparseft adapter records, and an optional diff applied on top.

`export` looks its format up in `EXPORT_FORMATS` ({name: "module:function"}), each function
taking `(model, directory, *, tokenizer=None, **options)`; a new format is one line there.

This module sits at the top of the layers (it reaches load, export and integrations); the
packages `sparseft.load` and `sparseft.export` are themselves callable and forward to these two
functions (see sparseft/__init__.py), so `from sparseft import load, export` gives verbs.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Sequence

# format name -> "module:function" with signature (model, directory, *, tokenizer=None, **options)
EXPORT_FORMATS = {
    "pretrained": "sparseft.api:save_pretrained",           # save_pretrained folder + configs + model card
    "compressed": "sparseft.export.compressed:export_compressed",  # bitmask sparse + packed quantized
    "gguf": "sparseft.api:save_gguf",                        # llama.cpp file (Llama-family decoders)
}
_TASK_TYPES = {"TOKEN_CLS": "ner", "SEQ_CLS": "cls", "CAUSAL_LM": "lm"}


def infer_task(name: str) -> str:
    """'ner' / 'cls' / 'lm' for `name`: a diff's manifest task, an adapter's task_type, else the saved
    architecture (GGUF files are 'lm'; diffs and adapters without one fall back to their base)."""
    from sparseft.load.artifacts import artifact_kind, base_of
    from sparseft.load.model import resolve_model

    kind, path = artifact_kind(name), Path(name)
    if kind == "sparse-diff":
        task = json.loads((path / "manifest.json").read_text()).get("task")
        return task or infer_task(base_of(name))
    if kind == "peft-adapter":
        task = _TASK_TYPES.get(json.loads((path / "adapter_config.json").read_text()).get("task_type"))
        return task or infer_task(base_of(name))
    src = resolve_model(name)
    if src.gguf_file:
        return "lm"
    cfg_path = Path(src.path) / "config.json"
    archs = (json.loads(cfg_path.read_text()).get("architectures") or []) if cfg_path.exists() else []
    for arch in archs:
        for suffix, task in (("ForTokenClassification", "ner"), ("ForSequenceClassification", "cls"),
                             ("ForCausalLM", "lm")):
            if arch.endswith(suffix):
                return task
    raise ValueError(f"cannot tell the task of {name} (architectures {archs}); pass task='ner', 'cls' or 'lm'")


def load(name: str, task: str | None = None, *, labels: Sequence[str] | None = None, dtype=None,
         diff: str | None = None, trust_remote_code: bool = False):
    """Load a model, a sparse diff (applied to its base), a peft adapter (merged) or a compressed folder.

    `sparseft.load.model.load_model` does the loading (it recognises every artifact folder, see
    docs/artifacts.md); this verb adds the task when it is not given and the head labels a
    sparseft adapter records, and can apply a diff on top.

    Args:
        name: alias ('minilm', 'smollm2'), folder, .gguf file or hub id; or a sparse diff folder,
            a peft adapter folder or a compressed checkpoint folder.
        task: 'ner', 'cls' or 'lm' (default: `infer_task(name)`).
        labels: label strings for a new classification head.
        dtype: torch dtype (default float32).
        diff: a diff folder (or hub id) to apply to the loaded model (`apply_diff_`).

    Example:
        >>> model = load("minilm", task="ner", labels=["O", "B-PER", "I-PER"])   # doctest: +SKIP
        >>> tuned = load("runs/sft/diff")                                         # doctest: +SKIP
    """
    from sparseft.load.artifacts import artifact_kind
    from sparseft.load.model import load_model

    task = task or infer_task(str(name))
    if labels is None and task in ("ner", "cls") and artifact_kind(str(name)) == "peft-adapter":
        labels = json.loads((Path(name) / "adapter_config.json").read_text()).get("labels")  # SparseFTConfig
    model = load_model(str(name), task, labels=labels, dtype=dtype, trust_remote_code=trust_remote_code)
    if diff is not None:
        from sparseft.export.sparse_diff import apply_diff_, load_diff

        apply_diff_(model, load_diff(diff))
    return model


def export(model, directory: str | Path, format: str = "pretrained", *, tokenizer=None, **options) -> Any:
    """Write `model` to `directory` in `format` (one of EXPORT_FORMATS); returns the exporter's result.

    Args:
        model: a transformers model (dense, pruned, quantized or merged).
        directory: the target folder (for 'gguf', the .gguf file path).
        format: 'pretrained' (save_pretrained + configs + model card), 'compressed', 'gguf', ...
        tokenizer: saved alongside when given.
        options: passed to the exporter (e.g. sparse='always' for 'compressed', qtype='q8_0' for 'gguf').

    Example:
        >>> export(model, "out/model")                                  # doctest: +SKIP
        >>> export(model, "out/small", format="compressed", tokenizer=tok)  # doctest: +SKIP
    """
    target = EXPORT_FORMATS.get(format)
    if target is None:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(sorted(EXPORT_FORMATS))}")
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(module), fn)(model, directory, tokenizer=tokenizer, **options)


def save_pretrained(model, directory: str | Path, *, tokenizer=None, **options) -> Path:
    """`sparseft.export.save.save_artifact`: model + tokenizer + configs + README.md model card."""
    from sparseft.export.save import save_artifact

    return save_artifact(model, tokenizer, directory, **options)


def save_gguf(model, path: str | Path, *, tokenizer=None, **options) -> dict:
    """`sparseft.export.gguf.export_gguf` (qtype='f16' by default; 'q8_0', 'q4_0', ...)."""
    from sparseft.export.gguf import export_gguf

    return export_gguf(model, path, tokenizer=tokenizer, **options)

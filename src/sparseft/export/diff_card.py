"""The README.md model card of a sparse diff folder (written by `save_diff`).

The card says what the diff is (base model, revision and fingerprint, method, density, task and
labels), lists the metrics recorded in the manifest, and how to load it: `sparseft.load(folder)`
(base + diff), `apply_diff_` on a base loaded by hand, or conversion to a peft adapter.
"""

from __future__ import annotations

from pathlib import Path

from sparseft.export.model_card import python_snippet, write_model_card


def write_diff_card(directory: str | Path, manifest: dict, *, load_path: str | None = None) -> Path:
    """Write `<directory>/README.md` for the diff whose manifest is `manifest`.

    Args:
        load_path: the folder or hub id shown in the loading snippet (default: `directory`).
    """
    where = str(load_path or directory)
    base = manifest.get("base_model") or None
    code = (f"import sparseft\n\n"
            f"model = sparseft.load({where!r})  # loads the base model and applies the diff\n\n"
            f"# or, onto a base you loaded yourself (checked against the base fingerprint):\n"
            f"sparseft.apply_diff_(base_model, sparseft.load_diff({where!r}))\n\n"
            f"# as a peft adapter:\n"
            f"from sparseft.integrations.convert import diff_to_adapter\n"
            f"diff_to_adapter({where!r}, 'adapter')  # then peft.PeftModel.from_pretrained(base_model, 'adapter')")
    method = manifest.get("method") or {}
    extra = {"base revision": manifest.get("base_revision") or "-",
             "base fingerprint": manifest.get("base_fingerprint") or "-",
             "method": manifest.get("mask") or (method.get("_type") if isinstance(method, dict) else None) or "-",
             "density": manifest.get("density"), "entries": manifest.get("count"),
             "dense tensors (heads)": ", ".join(sorted(manifest.get("dense") or {})) or "-"}
    if manifest.get("labels"):
        extra["labels"] = ", ".join(map(str, manifest["labels"]))
    return write_model_card(directory, kind="sparse-diff", base_model=base, task=manifest.get("task"),
                            metrics=manifest.get("metrics"), how_to_load=python_snippet(code),
                            tags=["sparse-fine-tuning"], extra={k: v for k, v in extra.items() if v is not None})

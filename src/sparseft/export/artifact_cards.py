"""Model cards for model folders: what each kind is and the exact code that loads it right.

    write_folder_card("runs/q/model", model, layout="modules")        # after save_pretrained
    write_folder_card("runs/q/compressed", model, layout="sparseft")  # after export_compressed

`layout` is the folder's loading story (docs/artifacts.md):
  "plain"               an ordinary folder: `AutoModelFor*.from_pretrained` (library transformers)
  "modules"             sparseft's swapped modules recorded in config.json: `import sparseft`
                        first, then `from_pretrained` (plain transformers refuses the folder)
  "compressed-tensors"  `from_pretrained` with the compressed-tensors package installed
  "sparseft"            sparseft's compressed encoding: `sparseft.load` / `load_compressed` only
"""

from __future__ import annotations

from pathlib import Path

from sparseft.export.model_card import python_snippet, write_model_card

_TASKS = {"ForTokenClassification": "ner", "ForSequenceClassification": "cls", "ForCausalLM": "lm"}


def auto_class(model) -> str:
    """The transformers Auto class that loads `model`'s architecture ('AutoModelForCausalLM', ...)."""
    name = type(model).__name__
    return "AutoModel" + name[name.index("For"):] if "For" in name else "AutoModel"


def model_task(model) -> str | None:
    name = type(model).__name__
    return next((task for suffix, task in _TASKS.items() if name.endswith(suffix)), None)


def how_to_load(layout: str, where: str, auto: str, task: str | None) -> tuple[str, str]:
    """(library_name, markdown) for a folder of `layout` at `where`."""
    task_arg = f", task={task!r}" if task else ""
    if layout == "plain":
        return "transformers", python_snippet(f"from transformers import {auto}\n\nmodel = {auto}.from_pretrained({where!r})")
    if layout == "compressed-tensors":
        return "transformers", python_snippet(
            f"# pip install compressed-tensors  (no sparseft needed; vLLM reads this format too)\n"
            f"from transformers import {auto}\n\nmodel = {auto}.from_pretrained({where!r})")
    if layout == "modules":
        return "sparseft", python_snippet(
            f"import sparseft  # registers the 'sparseft' quantizer with transformers\n"
            f"from transformers import {auto}\n\n"
            f"model = {auto}.from_pretrained({where!r})  # the quantized / sparse layers are rebuilt\n"
            f"# or: sparseft.load({where!r}{task_arg})\n\n"
            f"# Without sparseft, transformers refuses this folder (size mismatch on the guard tensors)\n"
            f"# instead of loading random weights.") + "\n\nCLI: `sparseft eval " + where + " --data FILE`"
    if layout == "sparseft":
        return "sparseft", python_snippet(
            f"import sparseft\n\nmodel = sparseft.load({where!r}{task_arg})\n"
            f"# or: from sparseft.export.compressed import load_compressed; model = load_compressed({where!r})\n\n"
            f"# `from_pretrained` refuses this folder: its tensors are bitmask / packed encoded.") + \
            "\n\nCLI: `sparseft eval " + where + " --data FILE`"
    raise ValueError(f"unknown folder layout {layout!r}")


def write_folder_card(directory: str | Path, model, *, layout: str, where: str | None = None,
                      metrics: dict | None = None, extra: dict | None = None, base_model: str | None = None) -> Path:
    """README.md for a model folder written from `model` (see module docstring for `layout`).

    Args:
        where: the folder's final path shown in the snippets (when `directory` is a temporary
            folder that is renamed afterwards).
    """
    directory = Path(directory)
    task = model_task(model)
    library, text = how_to_load(layout, str(where or directory), auto_class(model), task)
    kind = {"plain": "model", "modules": "sparseft-modules", "compressed-tensors": "compressed",
            "sparseft": "compressed"}[layout]
    tags = ["compressed-tensors"] if layout == "compressed-tensors" else []
    if base_model is None:
        base_model = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    return write_model_card(directory, kind=kind, base_model=base_model, task=task, metrics=metrics,
                            how_to_load=text, library_name=library, tags=tags,
                            extra={"architecture": type(model).__name__, "layout": layout, **(extra or {})})

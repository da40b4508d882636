"""Hub-style model cards (`README.md`) for every artifact folder sparseft writes.

    write_model_card("runs/x/compressed", kind="compressed", base_model="minilm",
                     metrics={"eval": {"f1": 0.91}}, how_to_load=loading_snippet)

The card is what the Hugging Face Hub shows for a folder: YAML front matter (`library_name`,
`base_model`, `tags`, `pipeline_tag`) followed by a short description, a metrics table and a
"How to load" section. The "How to load" text is required: for folders that plain transformers
cannot load (sparse diffs, sparseft-quantized checkpoints) it is the only place that says what
to run instead. Metrics are given either flat ({"f1": 0.9}) or per stage ({"eval": {"f1": 0.9}});
only numbers and short strings are tabulated.

The front matter is written by hand (a handful of scalar and list keys) so that no YAML or Hub
library is needed; values are quoted when they contain YAML-significant characters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from sparseft.utils.io import atomic_write_text

CARD_NAME = "README.md"
_TASK_PIPELINE = {"ner": "token-classification", "cls": "text-classification", "lm": "text-generation"}
_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./")


def _yaml_scalar(value: Any) -> str:
    text = str(value)
    if text and set(text) <= _PLAIN and not text[0] in "-." and text.lower() not in ("true", "false", "null"):
        return text
    return json.dumps(text)  # a JSON string is a valid double-quoted YAML scalar


def _front_matter(kind: str, base_model: str | None, task: str | None, library_name: str,
                  tags: Sequence[str]) -> str:
    lines = ["---", f"library_name: {_yaml_scalar(library_name)}"]
    if base_model:
        lines.append(f"base_model: {_yaml_scalar(base_model)}")
    if task in _TASK_PIPELINE:
        lines.append(f"pipeline_tag: {_TASK_PIPELINE[task]}")
    lines.append("tags:")
    for tag in dict.fromkeys(["sparseft", kind, *tags]):  # ordered, unique
        lines.append(f"- {_yaml_scalar(tag)}")
    lines.append("---")
    return "\n".join(lines)


def _format_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and len(value) <= 80:
        return value.replace("|", "\\|")
    return None  # nested or long values are left out of the table


def _metrics_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(stage, metric, value) rows; flat dicts get stage '-'."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            for sub, v in value.items():
                text = _format_value(v)
                if text is not None:
                    rows.append((str(key), str(sub), text))
        else:
            text = _format_value(value)
            if text is not None:
                rows.append(("-", str(key), text))
    return rows


def render_model_card(*, kind: str, how_to_load: str, base_model: str | None = None, task: str | None = None,
                      metrics: Mapping[str, Any] | None = None, library_name: str = "sparseft",
                      description: str | None = None, tags: Sequence[str] = (),
                      extra: Mapping[str, Any] | None = None) -> str:
    """The card text (see `write_model_card` for the arguments)."""
    if not kind or not isinstance(kind, str):
        raise ValueError(f"model card: kind must be a non-empty string, got {kind!r}")
    if not how_to_load or not how_to_load.strip():
        raise ValueError("model card: how_to_load must say how to load the folder")
    parts = [_front_matter(kind, base_model, task, library_name, tags), "",
             f"# {kind} artifact written by sparseft", ""]
    parts.append(description.strip() if description else
                 f"Artifact kind: `{kind}`" + (f", from base model `{base_model}`." if base_model else "."))
    parts.append("")
    if extra:
        for key, value in extra.items():
            text = _format_value(value)
            parts.append(f"- **{key}**: {text if text is not None else json.dumps(value, default=str)}")
        parts.append("")
    rows = _metrics_rows(metrics or {})
    if rows:
        parts += ["## Metrics", "", "| stage | metric | value |", "|---|---|---|"]
        parts += [f"| {s} | {m} | {v} |" for s, m, v in rows]
        parts.append("")
    parts += ["## How to load", "", how_to_load.strip(), ""]
    return "\n".join(parts)


def write_model_card(directory: str | Path, *, kind: str, how_to_load: str, base_model: str | None = None,
                     task: str | None = None, metrics: Mapping[str, Any] | None = None,
                     library_name: str = "sparseft", description: str | None = None,
                     tags: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> Path:
    """Write `<directory>/README.md` (atomically) and return its path.

    Args:
        directory: an existing artifact folder (a card is written into it, never a new folder).
        kind: artifact kind, e.g. 'dense', 'quantized', 'compressed', 'sparse-diff', 'lora-adapter';
            it becomes a tag and the title.
        how_to_load: markdown (usually a fenced code block) saying how to load the folder.
        base_model: the base model id or path (front matter `base_model`).
        task: 'ner', 'cls' or 'lm' (sets `pipeline_tag`).
        metrics: flat {name: value} or per stage {stage: {name: value}}.
        library_name: 'sparseft' for folders that need sparseft; 'transformers' / 'peft' for
            folders those libraries load on their own.
        description: one paragraph; default names the kind and base model.
        tags: extra Hub tags.
        extra: {label: value} facts listed under the description (sizes, sparsity, method).

    Example:
        >>> write_model_card("out", kind="dense", how_to_load="AutoModel.from_pretrained('out')")  # doctest: +SKIP
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"model card: {directory} is not a folder")
    path = directory / CARD_NAME
    atomic_write_text(path, render_model_card(kind=kind, how_to_load=how_to_load, base_model=base_model, task=task,
                                              metrics=metrics, library_name=library_name,
                                              description=description, tags=tags, extra=extra))
    return path


def python_snippet(code: str) -> str:
    """`code` as a fenced Python block (for `how_to_load`)."""
    return f"```python\n{code.strip()}\n```"

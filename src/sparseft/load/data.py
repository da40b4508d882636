"""Task data: read records from files, hold out an eval slice if needed, tokenize once.

`DataConfig` says where the data is and how to read it; `build_task_data(cfg, tokenizer)` returns
a `TaskData` with tokenized train/eval features, the label list and the eval records (kept for
entity-level scoring). Readers live in `readers.py`, tokenization in `tokenize.py`.

Subsets for sweeps are fixed and stated: `train_limit=N` keeps the first N training records in
file order (after any held-out split), so everyone who reruns a benchmark trains on the same data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sparseft.config.base import BaseConfig, known_config
from sparseft.load import readers
from sparseft.load.readers import DataError
from sparseft.load.tokenize import (cls_label_list, ner_label_list, tokenize_cls, tokenize_lm,
                                    tokenize_ner)

FORMATS = ("auto", "conll", "csv", "tsv", "jsonl", "clinc150", "text")


@known_config
@dataclass
class DataConfig(BaseConfig):
    """Where the task data lives and how to read it.

    Args:
        task: 'ner', 'cls' or 'lm'.
        train: training file. eval: evaluation file; if empty, `eval_fraction` of train is held out.
        eval_fraction: held-out share of the training records when `eval` is empty.
        split_seed: seed of that held-out split.
        format: one of FORMATS; 'auto' picks conll for ner, text for lm, and by extension for cls
            ('.json' means a CLINC150-style file).
        text_col / label_col / columns: classification columns (see readers.read_classification).
        max_length: token limit per example (ner/cls); block_size: LM block length.
        train_limit / eval_limit: keep only the first N records (fixed subsets for sweeps).
        subset_seed: with train_limit, take a seeded random sample of N training records (kept in
            file order) instead of the first N: needed for files sorted by label (BANKING77).
    """

    task: str = "ner"
    train: str = ""
    eval: str = ""
    format: str = "auto"
    text_col: str | list[str] = "text"
    label_col: str = "label"
    columns: list[str] | None = None
    eval_fraction: float = 0.1
    split_seed: int = 0
    max_length: int = 128
    block_size: int = 256
    train_limit: int | None = None
    eval_limit: int | None = None
    subset_seed: int | None = None

    def __post_init__(self) -> None:
        if self.task not in ("ner", "cls", "lm"):
            raise ValueError(f"unknown task {self.task!r}; valid tasks: ner, cls, lm")
        if self.format not in FORMATS:
            raise ValueError(f"unknown data format {self.format!r}; valid formats: {', '.join(FORMATS)}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        for name in ("max_length", "block_size"):
            if getattr(self, name) < 8:
                raise ValueError(f"{name} must be >= 8, got {getattr(self, name)}")
        for name in ("train_limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive count or None, got {value}")


@dataclass
class TaskData:
    task: str
    labels: list[str]
    train: list[dict]
    eval: list[dict]
    eval_records: list = field(default_factory=list)


def _format_for(cfg: DataConfig, path: str) -> str:
    if cfg.format != "auto":
        return cfg.format
    if cfg.task == "ner":
        return "conll"
    if cfg.task == "lm":
        return "text"
    suffix = Path(path).suffix.lower()
    return {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "clinc150"}.get(suffix, "csv")


def read_records(cfg: DataConfig, path: str, *, split: str = "train"):
    """Read one file into records (ner/cls) or text (lm), per `cfg`."""
    fmt = _format_for(cfg, path)
    if fmt == "conll":
        return readers.read_conll(path)
    if fmt == "text":
        return readers.read_text(path)
    if fmt == "clinc150":
        return readers.read_clinc150(path, split=split)
    return readers.read_classification(path, text_col=cfg.text_col, label_col=cfg.label_col,
                                       fmt=fmt, columns=cfg.columns)


def split_records(records: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then the last `fraction` becomes the held-out slice (at least one record)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(records) * fraction)))
    if n_eval >= len(records):
        raise DataError(f"cannot hold out {fraction:.0%} of {len(records)} records: too few")
    keep, held = sorted(order[:-n_eval]), sorted(order[-n_eval:])
    return [records[i] for i in keep], [records[i] for i in held]


def load_split_records(cfg: DataConfig) -> tuple[list, list]:
    """(train records, eval records) with held-out split and limits applied."""
    if not cfg.train:
        raise ValueError("DataConfig.train is empty: give a training file")
    fmt = _format_for(cfg, cfg.train)
    train = read_records(cfg, cfg.train, split="train")
    if cfg.eval:
        evals = read_records(cfg, cfg.eval, split="val" if fmt == "clinc150" else "train")
    elif fmt == "clinc150":
        evals = read_records(cfg, cfg.train, split="val")
    elif cfg.task == "lm":
        cut = int(len(train) * (1 - cfg.eval_fraction))
        train, evals = train[:cut], train[cut:]
    else:
        train, evals = split_records(train, cfg.eval_fraction, cfg.split_seed)
    if cfg.task != "lm":
        if cfg.train_limit and cfg.subset_seed is not None and cfg.train_limit < len(train):
            keep = sorted(random.Random(cfg.subset_seed).sample(range(len(train)), cfg.train_limit))
            train = [train[i] for i in keep]
        elif cfg.train_limit:
            train = train[:cfg.train_limit]
        if cfg.eval_limit:
            evals = evals[:cfg.eval_limit]
    return train, evals


def build_task_data(cfg: DataConfig, tokenizer, labels: Sequence[str] | None = None) -> TaskData:
    """Read, split and tokenize. `labels` fixes the label order (e.g. from a trained model)."""
    train_recs, eval_recs = load_split_records(cfg)
    if cfg.task == "lm":
        train = tokenize_lm(train_recs, tokenizer, block_size=cfg.block_size)
        evals = tokenize_lm(eval_recs, tokenizer, block_size=cfg.block_size)
        if cfg.train_limit:
            train = train[:cfg.train_limit]
        if cfg.eval_limit:
            evals = evals[:cfg.eval_limit]
        return TaskData("lm", [], train, evals, [])
    labels = list(labels) if labels else (ner_label_list(train_recs) if cfg.task == "ner"
                                          else cls_label_list(train_recs))
    check_label_set(cfg, labels)
    label2id = {label: i for i, label in enumerate(labels)}
    tok = tokenize_ner if cfg.task == "ner" else tokenize_cls
    train = tok(train_recs, tokenizer, label2id, max_length=cfg.max_length)
    evals = tok(eval_recs, tokenizer, label2id, max_length=cfg.max_length)
    return TaskData(cfg.task, labels, train, evals, eval_recs)


def check_label_set(cfg: DataConfig, labels: Sequence[str]) -> None:
    """Refuse training labels that cannot make a classifier (raise DataError naming the file).

    One class would build a 1-output head, which transformers treats as *regression* (accuracy
    1.0 by construction); an NER set whose tags are all 'O' has no entity to learn (F1 0).
    """
    if cfg.task == "cls" and len(labels) < 2:
        raise DataError(f"{cfg.train}: every training example has the label {labels[0]!r} (column "
                        f"{cfg.label_col!r}); classification needs at least 2 classes")
    if cfg.task == "ner" and len(labels) < 2:
        raise DataError(f"{cfg.train}: every tag is 'O' (no entities); NER needs at least one "
                        f"B-TYPE / I-TYPE tag in the training data")


def position_limit(model) -> int | None:
    """Tokens the model can take if it has learned absolute position embeddings (BERT, GPT-2),
    else None (rotary / relative positions have no hard table to index past)."""
    import torch.nn as nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in ("position_embeddings", "wpe"):
            pad = module.padding_idx  # RoBERTa-style tables start after the padding index
            return module.num_embeddings - (pad + 1 if pad is not None else 0)
    return None


def check_max_length(cfg: DataConfig, model) -> None:
    """`max_length` (ner/cls) or `block_size` (lm) must fit the model's position table."""
    limit = position_limit(model)
    field_name = "block_size" if cfg.task == "lm" else "max_length"
    value = getattr(cfg, field_name)
    if limit is not None and value > limit:
        flag = "" if cfg.task == "lm" else f" (--max-length {limit} or less)"
        raise ValueError(f"data.{field_name}={value} is more than the model's {limit} positions "
                         f"(max_position_embeddings in its config); use {limit} or less{flag}")


def build_eval_data(cfg: DataConfig, tokenizer, labels: Sequence[str], path: str) -> TaskData:
    """Tokenize only an evaluation file against a trained model's labels (unknown labels error)."""
    recs = read_records(cfg, path, split="val")
    if cfg.task == "lm":
        feats = tokenize_lm(recs, tokenizer, block_size=cfg.block_size)
        return TaskData("lm", [], [], feats[:cfg.eval_limit] if cfg.eval_limit else feats, [])
    if cfg.eval_limit:
        recs = recs[:cfg.eval_limit]
    label2id = {label: i for i, label in enumerate(labels)}
    tok = tokenize_ner if cfg.task == "ner" else tokenize_cls
    return TaskData(cfg.task, list(labels), [], tok(recs, tokenizer, label2id, max_length=cfg.max_length), recs)

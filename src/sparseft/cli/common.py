"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse


def add_data_args(p: argparse.ArgumentParser, *, train: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--task", choices=["ner", "cls", "lm"], help="task type (default: ner for training)")
    if train:
        g.add_argument("--train", help="training file (CoNLL, CSV/TSV/JSONL, CLINC150 JSON or text)")
        g.add_argument("--eval", default="", help="evaluation file (default: hold out --eval-fraction of train)")
        g.add_argument("--eval-fraction", type=float, default=0.1, help="held-out share when --eval is absent")
        g.add_argument("--train-limit", type=int, help="use only the first N training records")
    g.add_argument("--format", default="auto",
                   help="auto, conll, csv, tsv, jsonl, clinc150 or text (auto: by task and extension)")
    g.add_argument("--text-col", default="text", help="text column(s), comma separated (classification)")
    g.add_argument("--label-col", default="label", help="label column (classification)")
    g.add_argument("--columns", help="column names for header-less CSV/TSV, comma separated")
    g.add_argument("--max-length", type=int, default=128, help="max tokens per example")
    g.add_argument("--eval-limit", type=int, help="use only the first N evaluation records")


def add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="write into (or replace) a non-empty output folder that sparseft did not write "
                        "for this command; a folder holding the input is never replaced")


def data_dict(args: argparse.Namespace) -> dict:
    text_col = args.text_col.split(",") if "," in args.text_col else args.text_col
    out = {"task": args.task or "ner", "format": args.format, "text_col": text_col,
           "label_col": args.label_col, "max_length": args.max_length}
    if args.columns:
        out["columns"] = args.columns.split(",")
    if args.eval_limit:
        out["eval_limit"] = args.eval_limit
    for key in ("train", "eval", "eval_fraction", "train_limit"):
        value = getattr(args, key, None)
        if value not in (None, ""):
            out[key] = value
    return out


def parse_options(items: list[str] | None) -> dict:
    """`-o key=value` pairs, values parsed as YAML scalars."""
    from sparseft.config.base import parse_scalar

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"option {item!r} must look like key=value")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_scalar(value)
    return out

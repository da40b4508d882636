"""Argument helpers shared by the command modules: one vocabulary for every verb.

`--model` (alias `--model_name_or_path`) names the input model, `--output-dir` / `-o` (alias
`--output_dir`) the folder a verb writes, `--set KEY=VALUE` (alias `--option`) an extra field of
the verb's config; `HelpFormatter` appends "(default: X)" once, and only where X says something.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help already states a default, or X is None / False / ""."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default == "" \
            or action.default is argparse.SUPPRESS  # not `in (...)`: 0 == False, and 0 is worth stating
        if "%(default)" in text or "(default" in text or empty:
            return text
        return super()._get_help_string(action)


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter that keeps the description's line breaks (module docstrings as descriptions)."""


def add_model_arg(p, *, positional: bool = False, required: bool = False, default: str | None = None,
                  help: str = "model: alias (minilm, smollm2), folder, .gguf or hub id") -> None:
    """`--model` / `--model_name_or_path`; with `positional`, `MODEL` may also come first."""
    if positional:
        p.add_argument("model", nargs="?", help=help)
        p.add_argument("--model", "--model_name_or_path", dest="model_flag", metavar="MODEL",
                       help="the same as the positional MODEL")
        p.set_defaults(_model_required=required)
        return
    p.add_argument("--model", "--model_name_or_path", dest="model", required=required, default=default, help=help)


def resolve_model_arg(args: argparse.Namespace) -> str:
    """The model from the positional MODEL or `--model` (one of them, not two different ones)."""
    flag = getattr(args, "model_flag", None)
    if flag and args.model and flag != args.model:
        raise ValueError(f"MODEL given twice: {args.model!r} and --model {flag!r}")
    model = args.model or flag
    if not model and getattr(args, "_model_required", True):
        raise ValueError("give a model: MODEL or --model")
    args.model = model
    return model


def add_output_arg(p, *, default: str | None = None, required: bool = False, help: str = "output folder",
                   legacy_output: bool = False) -> None:
    """`--output-dir` / `-o` (alias `--output_dir`; `--output` too where a verb once used it), dest `output_dir`."""
    flags = ["--output-dir", "-o", "--output_dir"] + (["--output"] if legacy_output else [])
    p.add_argument(*flags, dest="output_dir", metavar="DIR", default=default, required=required, help=help)


def add_set_arg(p, help: str) -> None:
    """`--set KEY=VALUE` (alias `--option`, repeatable), dest `set`; read it with `parse_options`."""
    p.add_argument("--set", "--option", dest="set", action="append", metavar="KEY=VALUE", help=help)


def add_data_args(p: argparse.ArgumentParser, *, train: bool = True) -> None:
    """The data group; --max-length, --eval-fraction, --train-limit, --eval-limit come from DataConfig."""
    from sparseft.cli.flags import add_config_flags
    from sparseft.load.data import DataConfig

    g = p.add_argument_group("data")
    g.add_argument("--task", choices=["ner", "cls", "lm"],
                   help="task type (default: ner for training, else from the model's config)")
    if train:
        g.add_argument("--train", help="training file (CoNLL, CSV/TSV/JSONL, CLINC150 JSON or text)")
        g.add_argument("--eval", default="", help="evaluation file (default: hold out --eval-fraction of train)")
        add_config_flags(g, DataConfig, ["eval_fraction", "train_limit"])
    g.add_argument("--format", default="auto",
                   help="auto, conll, csv, tsv, jsonl, clinc150 or text (auto: by task and extension)")
    g.add_argument("--text-col", default="text", help="text column(s), comma separated (classification)")
    g.add_argument("--label-col", default="label", help="label column (classification)")
    g.add_argument("--columns", help="column names for header-less CSV/TSV, comma separated")
    add_config_flags(g, DataConfig, ["max_length", "eval_limit"])


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
    """`--set key=value` pairs, values parsed as YAML scalars."""
    from sparseft.config.base import parse_scalar

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r} must look like KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_scalar(value)
    return out


def compression_stages(args: argparse.Namespace, stage: dict, *, end: list[dict]) -> list[dict]:
    """[before eval] + stage + [dev eval with the deltas] + end: with data, every compression verb
    evaluates the input model first and reports metric and size before -> after (eval/stage.py)."""
    if not getattr(args, "train", None):
        return [stage, *end]
    return [{"name": "before", "method": "eval", "cost": False, "size": True}, stage,
            {"name": "dev", "method": "eval", "cost": False, "size": True, "compare_to": "before"}, *end]


def before_after_line(ctx, verb: str, stage: str = "dev") -> str | None:
    """One line: metric and size before -> after (None when the run had no before/after)."""
    ba = (ctx.state.get(stage) or {}).get("before_after") if ctx is not None else None
    if not ba:
        return None
    k = ba["metric"]
    parts = [f"{k} {ba[f'{k}_before']:.4f} -> {ba[f'{k}_after']:.4f} (delta {ba[f'delta_{k}']:+.4f})",
             f"weights {ba['weights_mb_before']:.2f} MB -> {ba['weights_mb_after']:.2f} MB"]
    if ba["delta_params"] == 0 and ba["delta_nonzero_params"]:  # zeros in dense storage (unstructured pruning)
        parts.append(f"nonzero params {ba['nonzero_params_before']:,} -> {ba['nonzero_params_after']:,}")
    return f"{verb} before -> after: " + "; ".join(parts)

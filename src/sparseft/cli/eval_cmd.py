"""`sparseft eval MODEL --data FILE`: score a saved model (labels come from its config)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparseft.cli.attention_args import add_attention_arg, apply_attention_arg_
from sparseft.cli.common import HelpFormatter, add_data_args, add_model_arg, data_dict, resolve_model_arg


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a saved model on a data file",
                       description="Evaluate MODEL (a save_pretrained folder) on --data.",
                       formatter_class=HelpFormatter)
    add_model_arg(p, positional=True, required=True, help="model folder (e.g. runs/train/model) or alias")
    p.add_argument("--data", required=True, help="evaluation file")
    add_data_args(p, train=False)
    p.add_argument("--batch-size", "--per_device_eval_batch_size", dest="batch_size", type=int, default=64,
                   help="eval batch size")
    p.add_argument("--cost", action="store_true", help="also measure size, latency and throughput")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    add_attention_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparseft.config.base import load_config
    from sparseft.eval.cost import measure_cost
    from sparseft.eval.evaluate import evaluate
    from sparseft.load.data import DataConfig, build_eval_data, check_max_length
    from sparseft.load.model import load_model, load_tokenizer, model_labels
    from sparseft.report.card import Report
    from sparseft.utils.io import atomic_write_json

    resolve_model_arg(args)
    saved = Path(args.model) / "sparseft_data.json"
    base = load_config(saved).to_dict()["_data"] if saved.exists() else {}
    given = data_dict(args)
    if args.task is None and base.get("task"):
        given["task"] = base["task"]
    for key in ("format", "text_col", "label_col", "columns"):  # keep the saved reading options
        if key in base and given.get(key) in (None, "auto", "text", "label"):
            given[key] = base[key]
    cfg = DataConfig.from_dict({**{k: v for k, v in given.items() if k != "train"}})
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, cfg.task)
    apply_attention_arg_(model, args)
    check_max_length(cfg, model)
    labels = model_labels(model) if cfg.task != "lm" else []
    data = build_eval_data(cfg, tokenizer, labels, args.data)
    report = Report(title=f"sparseft eval: {args.model}")
    pad = tokenizer.pad_token_id or 0
    report.log("eval", evaluate(model, data, pad_id=pad, batch_size=args.batch_size, progress=True))
    if args.cost:
        report.log("cost", measure_cost(model))
    print(report.render_text())
    if args.json:
        atomic_write_json(args.json, report.to_dict())
    return 0

"""`sparseft train`: fine-tune a model on a data file; a one-line front end to a 3-stage recipe
(train -> eval -> save), so the CLI and `sparseft run` share one code path."""

from __future__ import annotations

import argparse

from sparseft.cli.common import add_data_args, add_overwrite_arg, data_dict, parse_options


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model (full fine-tuning by default)",
                       description="Fine-tune MODEL on --train, evaluate on --eval, save to --output-dir/model.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="minilm", help="alias (minilm, smollm2), folder, .gguf or hub id")
    p.add_argument("--output-dir", default="runs/train", help="run folder (checkpoints, log, model, report)")
    p.add_argument("--method", default="train", help="training stage method (registered stage name)")
    add_overwrite_arg(p)
    add_data_args(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=3, help="passes over the training data")
    g.add_argument("--max-steps", type=int, help="total optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=32, help="examples per micro-batch")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (AdamW)")
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps for linear warm-up")
    g.add_argument("--mixed-precision", default="auto", help="auto, no, bf16 or fp16")
    g.add_argument("--seed", type=int, default=42, help="random seed")
    g.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --output-dir")
    g.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="extra field of the training stage config (repeatable)")
    g = p.add_argument_group("sparse fine-tuning (--method sft)")
    g.add_argument("--mask", help="mask method: random, magnitude, fisher, lottery or regrow (default fisher)")
    g.add_argument("--density", type=float, help="budget: fraction of the targeted weights to train")
    g.add_argument("--count", type=int, help="budget: exact number of weight entries to train")
    g.add_argument("--match-lora-rank", type=int, metavar="R", help="budget: as many entries as LoRA of rank R has")
    p.add_argument("--no-cost", action="store_true", help="skip latency/throughput measurement")
    p.set_defaults(func=run)


def build_recipe_dict(args: argparse.Namespace) -> dict:
    if not args.train:
        raise ValueError("--train is required (a training data file)")
    stage = {"name": "finetune", "method": args.method, "epochs": args.epochs, "batch_size": args.batch_size,
             "grad_accum": args.grad_accum, "lr": args.lr, "warmup_ratio": args.warmup_ratio,
             "mixed_precision": args.mixed_precision, "resume": not args.no_resume}
    if args.max_steps:
        stage["max_steps"] = args.max_steps
    sft = {k: v for k, v in (("mask", args.mask), ("density", args.density), ("count", args.count),
                             ("match_lora_rank", args.match_lora_rank)) if v is not None}
    if sft and args.method != "sft":
        raise ValueError(f"--mask/--density/--count/--match-lora-rank need --method sft (got --method {args.method})")
    stage.update(sft)
    stage.update(parse_options(args.option))
    return {"model": args.model, "data": data_dict(args), "output_dir": args.output_dir, "seed": args.seed,
            "stages": [stage, {"name": "dev", "method": "eval", "cost": not args.no_cost},
                       {"name": "save", "method": "save"}]}


def run(args: argparse.Namespace) -> int:
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run as run_recipe

    run_recipe(Recipe.from_dict(build_recipe_dict(args)), overwrite=args.overwrite)
    return 0

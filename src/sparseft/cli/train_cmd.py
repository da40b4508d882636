"""`sparseft train`: fine-tune a model on a data file; a one-line front end to a 3-stage recipe
(train -> eval -> save), so the CLI and `sparseft run` share one code path.

The training flags are generated from TrainConfig (sparseft.cli.flags), the sparse fine-tuning
ones from SFTConfig, the LoRA ones from LoRAStageConfig; any other field of the stage's config
goes through `--set KEY=VALUE`. `--lr` defaults to the method's learning rate
(sparseft/train/defaults.py); the value used is printed and written to the run's recipe.yaml.
"""

from __future__ import annotations

import argparse
import sys

from sparseft.cli.common import (HelpFormatter, add_data_args, add_model_arg, add_output_arg, add_overwrite_arg,
                                 add_set_arg, data_dict, parse_options)
from sparseft.cli.attention_args import add_attention_arg, attention_stages
from sparseft.cli.flags import add_config_flags, config_values

# TrainConfig fields with a flag; output_dir and seed are the run's (--output-dir, --seed).
TRAIN_FIELDS = ["epochs", "max_steps", "batch_size", "eval_batch_size", "grad_accum", "lr", "weight_decay",
                "warmup_ratio", "max_grad_norm", "mixed_precision", "eval_every", "metric_for_best",
                "load_best_at_end", "save_every", "resume", "log_every", "progress", "group_by_length",
                "distributed", "zero_stage", "offload", "gradient_checkpointing", "base_dtype"]
TRAIN_SKIP = {"output_dir": "--output-dir (the stage folder is <output-dir>/<stage>)", "seed": "--seed"}
# always written to the stage (the recipe records them); the rest only when changed
TRAIN_ALWAYS = ["epochs", "batch_size", "grad_accum", "lr", "warmup_ratio", "mixed_precision", "resume"]
SFT_FIELDS = ["mask", "density", "count", "match_lora_rank", "allocation", "dense_parts", "head_warmup_steps",
              "head_warmup_lr"]
LORA_FIELDS = ["rank", "rank_for_density", "alpha", "dropout", "head_warmup_steps", "head_warmup_lr", "merge"]


def add_parser(sub) -> None:
    from sparseft.sft.stage import SFTConfig
    from sparseft.train.config import TrainConfig
    from sparseft.train.defaults import DEFAULT_LR
    from sparseft.train.lora_stage import LoRAStageConfig

    by_method = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items() if not k.startswith("chat_"))
    p = sub.add_parser("train", help="fine-tune a model (full fine-tuning by default)",
                       description="Fine-tune MODEL on --train, evaluate on --eval, save to --output-dir/model.",
                       formatter_class=HelpFormatter)
    add_model_arg(p, default="minilm")
    add_output_arg(p, default="runs/train", help="run folder (checkpoints, log, model, report)")
    p.add_argument("--method", default="train", help="training stage method: train (full), sft (sparse), lora, "
                                                     "or any registered training stage (sparseft run --list-stages)")
    add_overwrite_arg(p)
    add_data_args(p)
    g = p.add_argument_group("training (TrainConfig)")
    add_config_flags(g, TrainConfig, TRAIN_FIELDS, defaults={"lr": None},
                     help_extra={"lr": f"Default: the method's ({by_method})."})
    g.add_argument("--seed", type=int, default=42, help="random seed (data order, dropout, new heads)")
    add_set_arg(g, "extra field of the training stage config (repeatable), e.g. --set heads=[classifier]")
    g = p.add_argument_group("sparse fine-tuning (--method sft; SFTConfig)")
    add_config_flags(g, SFTConfig, SFT_FIELDS)
    g = p.add_argument_group("LoRA (--method lora; LoRAStageConfig)")
    add_config_flags(g, LoRAStageConfig, LORA_FIELDS, prefix="lora-")
    p.add_argument("--no-cost", action="store_true", help="skip latency/throughput measurement")
    add_attention_arg(p)
    p.set_defaults(func=run)


def resolve_lr(method: str, lr: float | None) -> float:
    """`--lr` if given, else the method's default (train/defaults.py, else its config class's)."""
    if lr is not None:
        return lr
    from sparseft.train.defaults import default_lr

    found = default_lr(method)
    if found is None:
        import sparseft.methods  # noqa: F401  registers every stage
        from sparseft.cli.flags import field_default
        from sparseft.registry import REGISTRY

        cls = REGISTRY.get("stage", method).config_cls
        found = field_default(cls, "lr") if "lr" in getattr(cls, "__dataclass_fields__", {}) else None
    if found is None:
        raise ValueError(f"--method {method} has no learning rate; it is not a training stage")
    return found


def build_recipe_dict(args: argparse.Namespace) -> dict:
    from sparseft.sft.stage import SFTConfig
    from sparseft.train.config import TrainConfig
    from sparseft.train.lora_stage import LoRAStageConfig

    if not args.train:
        raise ValueError("--train is required (a training data file)")
    stage = {"name": "finetune", "method": args.method, **config_values(args, TrainConfig, TRAIN_ALWAYS),
             **config_values(args, TrainConfig, [f for f in TRAIN_FIELDS if f not in TRAIN_ALWAYS],
                             changed_only=True)}
    stage["lr"] = resolve_lr(args.method, args.lr)
    for cls, names, prefix, method in ((SFTConfig, SFT_FIELDS, "", "sft"),
                                       (LoRAStageConfig, LORA_FIELDS, "lora_", "lora")):
        extra = config_values(args, cls, names, prefix=prefix, changed_only=True)
        if extra and args.method != method:
            flags = "/".join("--" + (prefix + n).replace("_", "-") for n in extra)
            raise ValueError(f"{flags} need --method {method} (got --method {args.method})")
        stage.update(extra)
    stage.update(parse_options(args.set))
    return {"model": args.model, "data": data_dict(args), "output_dir": args.output_dir, "seed": args.seed,
            "stages": [stage, {"name": "dev", "method": "eval", "cost": not args.no_cost},
                       {"name": "save", "method": "save"}]}


def run(args: argparse.Namespace) -> int:
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run as run_recipe

    raw = build_recipe_dict(args)
    lr = raw["stages"][0]["lr"]
    print(f"sparseft train: --method {args.method}, lr {lr:g}" + ("" if args.lr is not None else
          " (the method's default, sparseft/train/defaults.py)"), file=sys.stderr, flush=True)
    raw["stages"][:0] = attention_stages(args)   # --attention: a sparse_attention stage before training
    run_recipe(Recipe.from_dict(raw), overwrite=args.overwrite)
    return 0

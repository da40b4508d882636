"""`sparseft prune`: prune a model one-shot (optionally fine-tune after, with distillation).

    sparseft prune --model runs/conll/model --method magnitude --sparsity 0.5 --output-dir runs/p50
    sparseft prune --model smollm2 --task lm --method wanda --pattern 2:4 \\
        --train ../shared/data/wikitext2/wiki.valid.tokens --output-dir runs/wanda24
    sparseft prune --model runs/conll/model --method structured --set ffn_sparsity=0.5 \\
        --train eng.train --eval eng.testa --epochs 1 --output-dir runs/struct50
    sparseft prune --model minilm --method movement --sparsity 0.9 --schedule cubic --epochs 3 \\
        --teacher runs/conll/model --prune-start 0.33 --regrow --train eng.train --output-dir runs/mv90

With `--train` the command runs a recipe (eval before -> prune or prune_finetune -> eval -> save)
and the data serve as calibration batches, fine-tuning data and evaluation: the input model is
scored first and the run prints and reports metric and size before -> after (the `dev` section's
`delta_<metric>`); without data it prunes and saves (methods that need calibration data then say
so). Either way the run folder holds the model (`model/`, loadable with plain transformers),
`report.md` / `metrics.json` with sparsity and cost before/after, and the pruning config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparseft.cli.common import (HelpFormatter, add_data_args, add_model_arg, add_output_arg, add_overwrite_arg,
                                 add_set_arg, before_after_line, compression_stages, data_dict, parse_options)
from sparseft.cli.flags import add_config_flags, config_values, flag_name

CUBIC_FLAGS = ("prune_start", "prune_end", "regrow")   # PruneFinetuneConfig fields of the cubic schedule


def add_parser(sub) -> None:
    from sparseft.compress.prune.stage import PruneFinetuneConfig, PruneStageConfig

    from sparseft.train.defaults import DEFAULT_LR

    p = sub.add_parser("prune", help="prune a model (magnitude, wanda, sparsegpt, N:M, structured ...)",
                       description="Prune MODEL one-shot; with --epochs > 0 fine-tune afterwards (KD on).",
                       formatter_class=HelpFormatter)
    add_model_arg(p, required=True, help="model folder (e.g. a fine-tuned runs/x/model) or alias")
    p.add_argument("--method", default="magnitude",
                   help="pruning method: magnitude, random, movement, nm, wanda, sparsegpt, structured")
    p.add_argument("--sparsity", type=float, help="fraction of targeted weights to zero (unstructured methods)")
    p.add_argument("--pattern", help="'unstructured' or N:M such as 2:4 (wanda, sparsegpt, nm)")
    add_set_arg(p, "extra field of the pruning method's config, e.g. allocation=per_row (repeatable)")
    add_output_arg(p, default="runs/prune", help="run folder (model, report, sparsity.json)")
    add_overwrite_arg(p)
    add_config_flags(p, PruneStageConfig, ["calib_samples"])
    add_data_args(p)
    g = p.add_argument_group("fine-tuning after pruning (needs --train)")
    g.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=int, default=0,
                   help="fine-tuning epochs after pruning (0: none)")
    g.add_argument("--schedule", choices=["oneshot", "cubic"], default="oneshot",
                   help="oneshot: prune then fine-tune with fixed masks; cubic: prune gradually while fine-tuning")
    add_config_flags(g, PruneFinetuneConfig, ["lr", "batch_size", "teacher", *CUBIC_FLAGS], defaults={"lr": None},
                     help_extra={"lr": f"Default: recovery fine-tuning's, {DEFAULT_LR['recovery']:g}."})
    g.add_argument("--no-distill", action="store_true", help="fine-tune without knowledge distillation")
    p.add_argument("--seed", type=int, default=42, help="random seed")
    p.add_argument("--no-cost", action="store_true", help="skip size/latency/throughput measurement")
    p.set_defaults(func=run)


def pruner_args(args: argparse.Namespace) -> dict:
    """The pruning method's config fields from --sparsity / --pattern / --set."""
    out: dict = {}
    if args.pattern and args.pattern != "unstructured" and args.method == "nm":
        n, _, m = args.pattern.partition(":")
        if not (n.isdigit() and m.isdigit()):
            raise ValueError(f"--pattern must look like N:M (e.g. 2:4), got {args.pattern!r}")
        out.update(n=int(n), m=int(m))
    elif args.pattern:
        out["pattern"] = args.pattern
    if args.sparsity is not None:
        if args.method in ("structured", "nm"):
            raise ValueError(f"--sparsity does not apply to {args.method}; use "
                             + ("--set ffn_sparsity=... / --set head_sparsity=..." if args.method == "structured"
                                else "--pattern N:M"))
        out["sparsity"] = args.sparsity
    if args.pattern and "sparsity" not in out and args.method in ("wanda", "sparsegpt") and ":" in args.pattern:
        n, _, m = args.pattern.partition(":")
        out["sparsity"] = 1 - int(n) / int(m)
    out.update(parse_options(args.set))
    return out


def infer_task(model: str) -> str:
    """ner / cls / lm from the saved config's architecture name."""
    from sparseft.load.model import resolve_model

    src = resolve_model(model)
    if src.gguf_file:
        return "lm"
    cfg_path = Path(src.path) / "config.json"
    archs = json.loads(cfg_path.read_text()).get("architectures") or [] if cfg_path.exists() else []
    for arch in archs:
        if arch.endswith("ForTokenClassification"):
            return "ner"
        if arch.endswith("ForSequenceClassification"):
            return "cls"
        if arch.endswith("ForCausalLM"):
            return "lm"
    raise ValueError(f"cannot tell the task of {model} (architectures {archs}); pass --task ner|cls|lm")


def build_recipe_dict(args: argparse.Namespace) -> dict:
    from sparseft.cli.train_cmd import resolve_lr
    from sparseft.compress.prune.stage import PruneFinetuneConfig

    data = data_dict(args)
    data["task"] = args.task or infer_task(args.model)
    common = {"pruner": args.method, "pruner_args": pruner_args(args), "calib_samples": args.calib_samples,
              "cost": not args.no_cost}
    if args.epochs > 0:
        if not args.train:
            raise ValueError("--epochs > 0 needs --train (fine-tuning data)")
        stage = {"name": "prune", "method": "prune_finetune", **common, "schedule": args.schedule,
                 "epochs": args.epochs, "lr": resolve_lr("prune_finetune", args.lr), "batch_size": args.batch_size,
                 "distill": not args.no_distill, "teacher": args.teacher}
        cubic = config_values(args, PruneFinetuneConfig, list(CUBIC_FLAGS), changed_only=True)
        if args.schedule == "cubic":
            stage["final_sparsity"] = stage["pruner_args"].pop("sparsity", 0.5)
            stage.update(cubic)
        elif cubic:
            raise ValueError(f"{', '.join(flag_name(n) for n in cubic)} only apply with --schedule cubic")
    else:
        stage = {"name": "prune", "method": "prune", **common}
    stages = compression_stages(args, stage, end=[{"name": "save", "method": "save"}])
    return {"model": args.model, "data": data, "output_dir": args.output_dir, "seed": args.seed, "stages": stages}


def run(args: argparse.Namespace) -> int:
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run as run_recipe

    recipe = Recipe.from_dict(build_recipe_dict(args))
    # without --train the recipe has no data: the pipeline then loads the model alone
    ctx = run_recipe(recipe, title=None if args.train else f"sparseft prune: {Path(args.output_dir).name}",
                     overwrite=args.overwrite)
    line = before_after_line(ctx, "prune")
    if line:
        print(line)
    print(f"pruned model saved to {Path(args.output_dir) / 'model'}")
    return 0

"""`sparseft factorize`: low-rank factorization of a model's Linear layers (optionally + recovery).

    sparseft factorize --model runs/conll/model --method whiten_svd --ratio 0.3 \\
        --train eng.train --eval eng.testa --output-dir runs/f30
    sparseft factorize --model runs/conll/model --method fisher_svd --ratio 0.3 --epochs 1 \\
        --train eng.train --eval eng.testa --output-dir runs/f30_kd          # + 1 epoch with KD
    sparseft factorize --model smollm2 --task lm --method whiten_svd --ratio 0.2 \\
        --train ../shared/data/wikitext2/wiki.valid.tokens --output-dir runs/svdllm20
    sparseft factorize --model runs/conll/model --method svd --energy 0.9 --output-dir runs/e90

Methods: svd (no data), asvd and whiten_svd (calibration data), fisher_svd (labelled task data).
Ranks: --ratio (fraction of the targeted parameters removed, allocated globally across layers),
--energy (kept spectral energy per layer) or --rank (one rank for every targeted layer).
With --train the command runs a recipe (eval before -> factorize or factorize_finetune -> eval ->
save): the first --calib-samples training examples calibrate, the eval split scores the input
model first and the run prints and reports metric and size before -> after (the `dev` section's
`delta_<metric>`; with --epochs > 0 the stage also logs the score right after factorizing).
The run folder holds `model/` (a factorized folder: `sparseft eval runs/x/model` and
`sparseft.load.model.load_model` read it; `--merge` saves it merged back to the dense shapes
instead, loadable by plain transformers), `report.md` / `metrics.json` (ranks per layer,
parameters, size, latency and throughput before and after).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparseft.cli.common import (HelpFormatter, add_data_args, add_model_arg, add_output_arg, add_overwrite_arg,
                                 add_set_arg, before_after_line, compression_stages, data_dict, parse_options)
from sparseft.cli.flags import add_config_flags

METHODS = ("svd", "asvd", "whiten_svd", "fisher_svd")


def add_parser(sub) -> None:
    from sparseft.compress.factorize.stage import FactorizeFinetuneConfig, FactorizeStageConfig

    from sparseft.train.defaults import DEFAULT_LR

    p = sub.add_parser("factorize", help="low-rank factorization (svd, asvd, whiten_svd, fisher_svd)",
                       description="Factorize MODEL's Linear layers into two smaller matmuls; with --epochs > 0 "
                                   "fine-tune the factors afterwards (KD on).",
                       formatter_class=HelpFormatter)
    add_model_arg(p, required=True, help="model folder (e.g. a fine-tuned runs/x/model) or alias")
    p.add_argument("--method", default="whiten_svd", choices=METHODS, help="factorization method")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ratio", type=float, help="fraction of the targeted Linear parameters to remove (default 0.3)")
    g.add_argument("--energy", type=float, help="per layer, keep this fraction of the spectral energy")
    g.add_argument("--rank", type=int, help="the same rank for every targeted layer")
    add_set_arg(p, "extra field of the method's config, e.g. allocation=uniform, alpha=0.5 (repeatable)")
    add_output_arg(p, default="runs/factorize", help="run folder (model, report, factorization.json)")
    add_overwrite_arg(p)
    add_config_flags(p, FactorizeStageConfig, ["calib_samples"])
    p.add_argument("--merge", action="store_true",
                   help="save the model merged back to dense Linear layers (original shapes, plain transformers)")
    add_data_args(p)
    t = p.add_argument_group("recovery fine-tuning (needs --train)")
    t.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=int, default=0,
                   help="fine-tuning epochs after factorizing (0: none)")
    add_config_flags(t, FactorizeFinetuneConfig, ["lr", "batch_size", "teacher"], defaults={"lr": None},
                     help_extra={"lr": f"Default: recovery fine-tuning's, {DEFAULT_LR['recovery']:g}."})
    t.add_argument("--sparse-density", type=float,
                   help="train only this fraction of the factor entries (sparse fine-tuning engine)")
    t.add_argument("--no-distill", action="store_true", help="fine-tune without knowledge distillation")
    p.add_argument("--seed", type=int, default=42, help="random seed")
    p.add_argument("--no-cost", action="store_true", help="skip size/latency/throughput measurement")
    p.set_defaults(func=run)


def factorizer_args(args: argparse.Namespace) -> dict:
    """The method's config fields from --ratio / --energy / --rank / --set."""
    out: dict = {}
    if args.energy is not None:
        out["energy"] = args.energy
    elif args.rank is not None:
        out["ranks"] = {"re:.*": args.rank}
    else:
        out["ratio"] = 0.3 if args.ratio is None else args.ratio
    out.update(parse_options(args.set))
    return out


def build_recipe_dict(args: argparse.Namespace) -> dict:
    from sparseft.cli.prune_cmd import infer_task
    from sparseft.cli.train_cmd import resolve_lr

    data = data_dict(args)
    data["task"] = args.task or infer_task(args.model)
    if args.method == "fisher_svd" and not args.train:
        raise ValueError("--method fisher_svd needs labelled task data: give --train")
    if args.method in ("asvd", "whiten_svd") and not args.train:
        raise ValueError(f"--method {args.method} needs calibration data: give --train (or use --method svd)")
    common = {"factorizer": args.method, "factorizer_args": factorizer_args(args),
              "calib_samples": args.calib_samples, "cost": not args.no_cost}
    if args.epochs > 0:
        if not args.train:
            raise ValueError("--epochs > 0 needs --train (fine-tuning data)")
        stage = {"name": "factorize", "method": "factorize_finetune", **common, "epochs": args.epochs,
                 "lr": resolve_lr("factorize_finetune", args.lr), "batch_size": args.batch_size,
                 "distill": not args.no_distill,
                 "teacher": args.teacher}
        if args.sparse_density is not None:
            stage.update(mode="sparse", density=args.sparse_density)
    else:
        if args.sparse_density is not None:
            raise ValueError("--sparse-density applies to recovery fine-tuning: give --epochs > 0")
        # one-shot: the before / dev eval stages give the baseline and the delta (no second copy)
        stage = {"name": "factorize", "method": "factorize", **common, "baseline": False}
    end = ([{"name": "merge", "method": "merge_factors"}] if args.merge else []) + [{"name": "save", "method": "save"}]
    stages = compression_stages(args, stage, end=end)
    return {"model": args.model, "data": data, "output_dir": args.output_dir, "seed": args.seed, "stages": stages}


def run(args: argparse.Namespace) -> int:
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run as run_recipe

    recipe = Recipe.from_dict(build_recipe_dict(args))
    # without --train the recipe has no data: the pipeline then loads the model alone
    ctx = run_recipe(recipe, title=None if args.train else f"sparseft factorize: {Path(args.output_dir).name}",
                     overwrite=args.overwrite)
    line = before_after_line(ctx, "factorize")
    if line:
        print(line)
    kind = "merged (dense shapes)" if args.merge else "factorized"
    print(f"{kind} model saved to {Path(args.output_dir) / 'model'}")
    return 0

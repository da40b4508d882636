"""`sparseft moefy`: split a model's FFNs into routed experts (MoEfication), optionally with a learned router.

    sparseft moefy --model runs/conll/model --experts 16 --top-k 4 \\
        --train eng.train --eval eng.testa --output-dir runs/moe16k4           # k-means experts, oracle router
    sparseft moefy --model runs/conll/model --experts 32 --top-k 8 --router mlp \\
        --train eng.train --eval eng.testa -o runs/moe32k8 --set router_steps=500
    sparseft moefy --model smollm2 --task lm --experts 16 --top-k 8 --router mlp \\
        --train ../shared/data/wikitext2/wiki.valid.tokens -o runs/smol_moe

The run folder holds `model/` (an expert folder: `sparseft eval runs/x/model` and `sparseft.load`
read it back with the same outputs), `report.md` / `metrics.json` (the dense and MoEfied task
metric and delta when --train / --eval are given, the experts' share of the dense FFN FLOPs,
router losses, size / latency / throughput before and after) and the stage's `experts.json`.
The oracle router (default) computes the real activation mass, i.e. the whole up-projection:
it shows what a perfect router would keep; `--router mlp` is the one that saves compute.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparseft.cli.common import add_data_args, add_overwrite_arg, data_dict, parse_options


def add_parser(sub) -> None:
    # the shared vocabulary's spellings (--model / --model_name_or_path, -o / --output-dir / --output_dir,
    # --set / --option); each help line states its default once
    p = sub.add_parser("moefy", help="split FFNs into routed experts (MoEfication)",
                       description="Split MODEL's FFN neurons into equal experts and route each token to a few.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "--model_name_or_path", dest="model", required=True,
                   help="model folder (e.g. a fine-tuned runs/x/model) or alias")
    p.add_argument("--experts", type=int, default=16, help="experts per FFN block, must divide d_ff (default: 16)")
    p.add_argument("--top-k", type=int, default=4, help="experts per token; with --threshold the most (default: 4)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="per token, the fewest experts that hold this share of the mass (default: 0 = always --top-k)")
    p.add_argument("--router", default="oracle", choices=("oracle", "mlp"),
                   help="oracle: real activation mass, for analysis (default); mlp: a small learned router "
                        "(needs --train)")
    p.add_argument("--clustering", default="kmeans", choices=("kmeans", "coactivation"),
                   help="group neurons by their weights (kmeans, default) or by co-activation on --train data")
    p.add_argument("--set", "--option", dest="set", action="append", metavar="KEY=VALUE",
                   help="extra MoEfyConfig field, e.g. router_steps=500, calib_tokens=16384 (repeatable)")
    p.add_argument("--output-dir", "-o", "--output_dir", dest="output_dir", metavar="DIR", default="runs/moefy",
                   help="run folder: model, report, experts.json (default: runs/moefy)")
    add_overwrite_arg(p)
    p.add_argument("--calib-samples", type=int, default=128,
                   help="training examples used for calibration (default: 128)")
    add_data_args(p)
    p.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    p.add_argument("--no-cost", action="store_true", help="skip size/latency/throughput measurement")
    p.set_defaults(func=run)


def moefy_args(args: argparse.Namespace) -> dict:
    """MoEfyConfig fields from the flags and --set."""
    out = {"num_experts": args.experts, "top_k": args.top_k, "threshold": args.threshold, "router": args.router,
           "clustering": args.clustering, "seed": args.seed}
    out.update(parse_options(args.set))
    return out


def build_recipe_dict(args: argparse.Namespace) -> dict:
    from sparseft.cli.prune_cmd import infer_task

    data = data_dict(args)
    data["task"] = args.task or infer_task(args.model)
    margs = moefy_args(args)
    if (margs.get("router") == "mlp" or margs.get("clustering") == "coactivation") and not args.train:
        raise ValueError("--router mlp and --clustering coactivation need calibration data: give --train")
    stages = [{"name": "moefy", "method": "moefy", "moefy_args": margs, "calib_samples": args.calib_samples,
               "cost": not args.no_cost},
              {"name": "save", "method": "save"}]
    return {"model": args.model, "data": data, "output_dir": args.output_dir, "seed": args.seed, "stages": stages}


def run(args: argparse.Namespace) -> int:
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run as run_recipe

    recipe = Recipe.from_dict(build_recipe_dict(args))
    run_recipe(recipe, title=None if args.train else f"sparseft moefy: {Path(args.output_dir).name}",
               overwrite=args.overwrite)
    print(f"expert model saved to {Path(args.output_dir) / 'model'}")
    return 0

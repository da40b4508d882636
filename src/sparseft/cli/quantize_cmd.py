"""`sparseft quantize`: quantize a model and write it as a compressed checkpoint.

    sparseft quantize --model runs/conll/model --method dynamic_int8 --output-dir runs/q8
    sparseft quantize --model runs/conll/model --method rtn --set bits=4 --set granularity=group \\
        --train eng.train --eval eng.testa --output-dir runs/rtn4
    sparseft quantize --model smollm2 --task lm --method gptq --set bits=4 --set group_size=128 \\
        --train ../shared/data/dolly_open_qa/train.jsonl --format jsonl --output-dir runs/gptq4

Runs a recipe: (eval before, with data) -> quantize -> (eval, with data) -> export. With `--train`
the first `--calib-samples` training examples calibrate (gptq, kmeans with importance=activation)
and the eval split is scored before and after quantization: the run prints and reports metric and
size before -> after (the `dev` section's `delta_<metric>`); without data the model is quantized
and exported only.
The run folder holds `compressed/` (load it with `sparseft.export.compressed.load_compressed`),
`report.md` / `metrics.json` (size against fp32, latency/throughput before and after) and the
quantizer config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparseft.cli.common import (HelpFormatter, add_data_args, add_model_arg, add_output_arg, add_overwrite_arg,
                                 add_set_arg, before_after_line, compression_stages, data_dict, parse_options)
from sparseft.cli.flags import add_config_flags


def add_parser(sub) -> None:
    from sparseft.compress.quantize.stage import QuantizeStageConfig

    p = sub.add_parser("quantize", help="quantize a model (rtn, nf4, kmeans, gptq, dynamic_int8) and export it",
                       description="Quantize MODEL and write a compressed checkpoint to OUTPUT_DIR/compressed.",
                       formatter_class=HelpFormatter)
    add_model_arg(p, required=True, help="model folder (e.g. a fine-tuned runs/x/model) or alias")
    p.add_argument("--method", default="dynamic_int8", help="quantizer: rtn, nf4, kmeans, gptq, dynamic_int8")
    add_set_arg(p, "field of the quantizer's config, e.g. bits=4, group_size=64 (repeatable)")
    add_output_arg(p, default="runs/quantize", help="run folder (compressed/, report, config)")
    add_overwrite_arg(p)
    add_config_flags(p, QuantizeStageConfig, ["calib_samples"])
    p.add_argument("--sparse", choices=["auto", "always", "never"], default="auto",
                   help="bitmask storage of sparse tensors in the export")
    p.add_argument("--float-dtype", choices=["keep", "float16", "bfloat16"], default="keep",
                   help="storage dtype of the tensors that are not quantized")
    add_data_args(p)
    p.add_argument("--seed", type=int, default=42, help="random seed")
    p.add_argument("--no-cost", action="store_true", help="skip latency/throughput measurement")
    p.set_defaults(func=run)


def build_recipe_dict(args: argparse.Namespace) -> dict:
    from sparseft.cli.prune_cmd import infer_task

    data = data_dict(args)
    data["task"] = args.task or infer_task(args.model)
    stages = [{"name": "quantize", "method": "quantize", "quantizer": args.method,
               "quantizer_args": parse_options(args.set), "calib_samples": args.calib_samples,
               "cost": not args.no_cost}]
    export = {"name": "export", "method": "export", "sparse": args.sparse, "float_dtype": args.float_dtype,
              "check": bool(args.train)}
    stages = compression_stages(args, stages[0], end=[export])
    return {"model": args.model, "data": data, "output_dir": args.output_dir, "seed": args.seed, "stages": stages}


def run(args: argparse.Namespace) -> int:
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run as run_recipe

    recipe = Recipe.from_dict(build_recipe_dict(args))
    # without --train the recipe has no data: the pipeline then loads the model alone
    ctx = run_recipe(recipe, title=None if args.train else f"sparseft quantize: {Path(args.output_dir).name}",
                     overwrite=args.overwrite)
    line = before_after_line(ctx, "quantize")
    if line:
        print(line)
    print(f"compressed checkpoint written to {Path(args.output_dir) / 'compressed'}")
    return 0

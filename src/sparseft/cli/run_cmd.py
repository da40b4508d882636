"""`sparseft run recipe.yaml key=value ...`: run a YAML recipe of stages."""

from __future__ import annotations

import argparse

from sparseft.cli.common import HelpFormatter, add_output_arg, add_overwrite_arg


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a YAML recipe of stages",
                       description="Run RECIPE (YAML). Overrides use dotted keys: seed=1, "
                                   "data.train_limit=2000, stages.finetune.lr=1e-4.",
                       formatter_class=HelpFormatter)
    p.add_argument("recipe", nargs="?", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides applied before validation")
    p.add_argument("--list-stages", action="store_true", help="list the registered stage methods and exit")
    add_output_arg(p, help="run folder (the same as the override output_dir=DIR)")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparseft.config.recipe import load_recipe
    from sparseft.pipeline import run as run_recipe

    if args.list_stages:
        import sparseft.methods  # noqa: F401
        from sparseft.registry import REGISTRY

        for m in REGISTRY.methods("stage"):
            print(f"{m.name:12s} {m.config_cls.__name__:20s} {m.description}")
        return 0
    if not args.recipe:
        raise ValueError("give a recipe YAML file (or --list-stages)")
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    run_recipe(load_recipe(args.recipe, overrides), overwrite=args.overwrite)
    return 0

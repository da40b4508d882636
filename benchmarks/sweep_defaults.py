"""Held-out sweep behind the per-method default learning rates (issues 14 item 6, 16 item 1).

Never dev, never test: every row trains on a fixed subset of CoNLL-2003 *train* and is scored
on a seeded 10% slice of *train* held out from it (DataConfig eval_fraction=0.1, split_seed=0:
1,404 sentences). The same budget for every method: the first --train-limit (default 2,000) of
the remaining sentences, --epochs (default 3) epochs, batch 32, warm-up 10%, weight decay 0.01,
one run per learning rate of the grid below (same grid size for sparse fine-tuning and LoRA).

Rows (MiniLM, entity F1 on the held-out slice):
  full   full fine-tuning                                  lr in --grid-full
  sft    sparse fine-tuning, fisher mask, density 1%       lr in --grid-sft
  lora   LoRA at the same trainable count (rank_for_density 0.01)   lr in --grid-lora
Variants of `sft` (issue 16 item 1; same budget; record sweep_variants unless --lrs):
  sft_bitfit      + dense biases and LayerNorms (dense_parts bias,norm), counted in the 1% budget
  sft_per_tensor  allocation per_tensor instead of global                at the sft default lr
  sft_fisher8 / sft_fisher128   8 / 128 Fisher selection batches instead of 32   at the sft default lr
Variants of `lora` (the same extra budget for the comparison to stay fair):
  lora_alpha_r / lora_alpha_4r  alpha = rank / 4 * rank instead of 2 * rank   two lrs each
  lora_dropout                  dropout 0.1 instead of 0                      at the lora default lr
  sft_ep5 / lora_ep5            5 epochs instead of 3 (same data)             at the default lr
  sft_embed       the embedding tables (word, position, type) join the Linear weights as candidates;
                  the count stays sft's 1% of the Linear weights (106,168 on MiniLM)   at the sft default lr
  sft_hw100 / sft_hw300 / sft_hw300_lr3e-3   head warm-up (only the new head trains, 100 / 300
                steps, lr 1e-3 / 3e-3) before the fisher mask is selected   at the sft default lr
  lora_hw300                    LoRA with the same head warm-up (300 steps, lr 1e-3)   at the lora default lr
  sft_hw0 / lora_hw0            no head warm-up: what the `sft` / `lora` rows were before 2026-12-04,
                                when the stages' default became 300 steps (so sft_hw300 = sft today)
  sft_<mask>                    another mask method (magnitude, lottery, spiel_ag, spiel_ma, random,
                                regrow, snr) with its own option defaults          at the sft default lr
  sft_snr128                    snr with 128 selection batches instead of 32   at the sft default lr
A variant is only comparable with `sft` / `lora` rows run on the same machine class (mixed
precision "auto" picks bf16 where it measures faster): rerun those at the default lr beside them,
e.g. `--only sft lora sft_ep5 lora_ep5 --lrs 0.003 --record-name sweep_variants_b`.

    python benchmarks/sweep_defaults.py                      # every row (9 rows, ~25 min on 2 idle cores)
    python benchmarks/sweep_defaults.py --only sft lora      # some methods
    python benchmarks/sweep_defaults.py --only sft_bitfit sft_per_tensor sft_fisher8 sft_fisher128   # ~30 min
    python benchmarks/sweep_defaults.py --only lora_alpha_r lora_alpha_4r lora_dropout   # ~15 min
    python benchmarks/sweep_defaults.py --smoke              # seconds, not a result

Each row runs in its own process. Record: benchmarks/results/sweep_defaults-<UTC stamp>.json
(rows + the best lr per method); run folders under benchmarks/runs/sweep/<stamp>/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "conll2003" / "eng.train"
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs" / "sweep"
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import best_by, prepare, run_grid, utc_stamp, write_json  # noqa: E402

GRIDS = {"sft": (1e-3, 3e-3, 1e-2), "lora": (1e-3, 3e-3, 1e-2), "full": (5e-5, 1e-4, 2e-4),
         "sft_bitfit": (1e-3, 3e-3, 1e-2), "sft_per_tensor": (3e-3,), "sft_fisher8": (3e-3,), "sft_fisher128": (3e-3,),
         "lora_alpha_r": (3e-3, 1e-2), "lora_alpha_4r": (1e-3, 3e-3), "lora_dropout": (3e-3,),
         "sft_ep5": (3e-3,), "lora_ep5": (3e-3,), "sft_embed": (3e-3,),
         **{v: (3e-3,) for v in ("sft_hw0", "sft_hw100", "sft_hw300", "sft_hw300_lr3e-3", "lora_hw0", "lora_hw300", "sft_snr128")},
         **{f"sft_{m}": (3e-3,) for m in ("magnitude", "lottery", "spiel_ag", "spiel_ma", "random", "regrow", "snr")}}
DEFAULT_METHODS = ("sft", "lora", "full")   # without --only; the variants run when named
SFT_VARIANTS = {"sft": {}, "sft_bitfit": {"dense_parts": "bias,norm"}, "sft_per_tensor": {"allocation": "per_tensor"},
                "sft_fisher8": {"mask_options": {"n_batches": 8}}, "sft_fisher128": {"mask_options": {"n_batches": 128}},
                "sft_ep5": {"epochs": 5},
                # the embeddings join the candidates, the count stays sft's (1% of MiniLM's Linear weights)
                "sft_embed": {"targets": ["Linear", "Embedding"], "density": None, "count": 106168},
                # head warm-up (a linear probe of the new head) before the fisher mask is selected
                "sft_hw0": {"head_warmup_steps": 0}, "sft_hw100": {"head_warmup_steps": 100},
                "sft_hw300": {"head_warmup_steps": 300},
                "sft_hw300_lr3e-3": {"head_warmup_steps": 300, "head_warmup_lr": 3e-3},
                "sft_snr128": {"mask": "snr", "mask_options": {"n_batches": 128}},
                **{f"sft_{m}": {"mask": m} for m in ("magnitude", "lottery", "spiel_ag", "spiel_ma", "random", "regrow", "snr")}}
# LoRA's share of the same budget (as many extra runs as the sft variants get, minus one): the
# scale alpha (default 2 * rank; rank_for_density 0.01 gives rank 3 on MiniLM, so alpha 3 = r and
# 12 = 4r) and dropout 0.1
LORA_VARIANTS = {"lora": {}, "lora_alpha_r": {"alpha": 3.0}, "lora_alpha_4r": {"alpha": 12.0},
                 "lora_dropout": {"dropout": 0.1}, "lora_ep5": {"epochs": 5}, "lora_hw0": {"head_warmup_steps": 0},
                 "lora_hw300": {"head_warmup_steps": 300}}


def stage_for(method: str, lr: float, args) -> dict:
    common = {"name": "finetune", "epochs": args.epochs, "batch_size": 32, "lr": lr, "warmup_ratio": 0.1,
              "weight_decay": 0.01, "resume": False}
    if method == "full":
        return {**common, "method": "train"}
    if method in SFT_VARIANTS:
        return {**common, "method": "sft", "mask": "fisher", "density": 0.01, **SFT_VARIANTS[method]}
    return {**common, "method": "lora", "rank_for_density": 0.01, **LORA_VARIANTS[method]}


def run_row(method: str, lr: float, out: Path, args) -> dict:
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run as run_recipe

    data = {"task": "ner", "train": str(args.train), "eval": "", "eval_fraction": 0.1, "split_seed": 0,
            "train_limit": args.train_limit, "max_length": 128}
    if args.smoke:
        data["eval_limit"] = 32
    recipe = {"model": args.model, "data": data, "output_dir": str(out), "seed": 42,
              "stages": [stage_for(method, lr, args), {"name": "heldout", "method": "eval", "cost": False}]}
    t0 = time.perf_counter()
    ctx = run_recipe(Recipe.from_dict(recipe))
    s = ctx.report.sections
    return {"method": method, "lr": lr, "heldout_f1": s["heldout"]["f1"], "steps": s["finetune"].get("steps"),
            "seconds_per_step": s["finetune"].get("seconds_per_step"),
            "trainable_params": s["finetune"].get("trainable_params"),
            "train_examples": len(ctx.data.train) if ctx.data else None,
            **{k: s["finetune"][k] for k in ("rank", "alpha", "train_seconds", "stage_seconds") if k in s["finetune"]}, "wall_seconds": time.perf_counter() - t0,
            "run_dir": str(out.relative_to(ROOT))}


def _train_extent(rows: list[dict], limit: int) -> str:
    """'first N sentences', or 'all of it (N sentences)' when --train-limit exceeds the train split
    (the rows report the split's size as train_examples)."""
    sizes = {r["train_examples"] for r in rows if r.get("train_examples")}
    if len(sizes) == 1 and next(iter(sizes)) < limit:
        return f"all of it ({next(iter(sizes))} sentences)"
    return f"first {limit} sentences"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(GRIDS), help="methods to sweep (default: all)")
    p.add_argument("--model", default="minilm")
    p.add_argument("--train", default=str(DATA))
    p.add_argument("--train-limit", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lrs", nargs="+", type=float, help="learning rates to run instead of the method's grid "
                   "(to extend a grid whose best value sits at its edge)")
    p.add_argument("--record-name", help="experiment name of the record (default: sweep_defaults, "
                   "sweep_defaults_extra with --lrs, sweep_variants when variants are named)")
    p.add_argument("--smoke", action="store_true", help="tiny limits; record under benchmarks/runs/")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    prepare(ROOT)
    if args.smoke:
        args.train_limit, args.epochs = 64, 1
    if args.child:
        method, lr, out = args.child
        write_json(Path(out, "row.json"), run_row(method, float(lr), Path(out), args))
        return 0
    stamp = utc_stamp()
    rows = run_grid(__file__, args.only or DEFAULT_METHODS,
                    lambda m: GRIDS[m][:1] if args.smoke else (args.lrs or GRIDS[m]), RUNS / stamp,
                    ["--model", args.model, "--train", args.train, "--train-limit", str(args.train_limit),
                     "--epochs", str(args.epochs)] + (["--smoke"] if args.smoke else []))
    from sparseft.utils.env import describe_environment
    from sparseft.utils.hardware import detect

    best = best_by(rows, "method", "heldout_f1")
    variants = set(args.only or DEFAULT_METHODS) - set(DEFAULT_METHODS)
    name = args.record_name or ("sweep_defaults_extra" if args.lrs else "sweep_variants" if variants else "sweep_defaults")
    record = {"experiment": name, "command": "python benchmarks/sweep_defaults.py " + " ".join(sys.argv[1:]),
              "date": stamp, "env": describe_environment(), "hardware": detect().to_dict(),
              "data": {"train": "CoNLL-2003 eng.train minus a seeded 10% held-out slice "
                                f"(split_seed 0), {_train_extent(rows, args.train_limit)}",
                       "score": "entity F1 on the held-out slice of train (never dev)"},
              "epochs": args.epochs, "rows": rows, "best": best}
    path = write_json(((RUNS / stamp) if args.smoke else RESULTS) / f"sweep_defaults-{stamp}.json", record)
    print(f"wrote {path.relative_to(ROOT)}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

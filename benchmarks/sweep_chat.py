"""Held-out learning-rate sweep behind the chat SFT defaults (issue 16: DEFAULT_LR chat_*).

Never validation, never test: every row trains SmolLM2-135M-Instruct on the first 300 records
of a seeded 90% of dolly_open_qa/train.jsonl and is scored (response loss, assistant tokens
only) on the first --heldout (150) records of the other 10% (ChatDataConfig eval_fraction=0.1,
split_seed=1234). Everything else is benchmarks/bench_chat.py's fixed protocol (1 epoch = 75
steps, micro-batch 4, max_seq_len 256, warm-up 10%, weight decay 0, final model scored, mixed
precision "auto"). The same grid size for every mode, so the comparison stays fair:

  full    full fine-tuning                       lr in GRIDS["full"]
  sparse  sparse fine-tuning, default mask, 1%   lr in GRIDS["sparse"]
  lora    LoRA at the same trainable count       lr in GRIDS["lora"]

    python benchmarks/sweep_chat.py                   # 9 rows, ~35 min on 2 idle cores
    python benchmarks/sweep_chat.py --only sparse --lrs 0.01   # extend a grid at its edge
    python benchmarks/sweep_chat.py --smoke --model /tmp/tiny_llama   # plumbing only, seconds

Each row runs in its own process. Record: benchmarks/results/sweep_chat-<UTC stamp>.json (rows +
the best lr per mode); run folders under benchmarks/runs/sweep_chat/<stamp>/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs" / "sweep_chat"
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_chat  # noqa: E402  the chat protocol: one recipe builder for the benchmark and its sweep
from benchlib import best_by, prepare, run_grid, utc_stamp, write_json  # noqa: E402

GRIDS = {"full": (1e-5, 2e-5, 5e-5), "sparse": (2e-4, 1e-3, 3e-3), "lora": (2e-4, 1e-3, 3e-3)}


def row_recipe(mode: str, lr: float, out: Path, args) -> dict:
    """bench_chat's recipe for `mode`, at `lr`, scored on the held-out slice of train."""
    settings = argparse.Namespace(**{**bench_chat.DEFAULTS, "model": args.model, "heldout": args.heldout,
                                     f"lr_{mode}": lr})
    if args.smoke:
        settings.train_limit, settings.heldout, settings.max_steps, settings.max_seq_len = 8, 4, 2, 128
    recipe = bench_chat.recipe_for(mode, settings)
    recipe["output_dir"] = str(out)
    recipe["stages"] = [st for st in recipe["stages"] if st["method"] != "chat_eval"]
    recipe["stages"].append({"name": "heldout", "method": "chat_eval", "batch_size": 8})
    return recipe


def run_row(mode: str, lr: float, out: Path, args) -> dict:
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run as run_recipe

    recipe = row_recipe(mode, lr, out, args)
    t0 = time.perf_counter()
    ctx = run_recipe(Recipe.from_dict(recipe), print_report=False)
    s = ctx.report.sections
    train = s["sft"]
    return {"mode": mode, "lr": lr, "heldout_response_loss": s["heldout"]["response_loss"],
            "heldout_records": s["data"].get("eval_examples"), "train_records": s["data"].get("train_examples"),
            **{k: train.get(k) for k in ("steps", "seconds_per_step", "trainable_params", "lora_dim")},
            "wall_seconds": time.perf_counter() - t0, "run_dir": str(out.relative_to(ROOT))}


def best_per_mode(rows: list[dict]) -> dict:
    return best_by(rows, "mode", "heldout_response_loss", minimize=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(GRIDS), help="modes to sweep (default: all)")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--heldout", type=int, default=150, help="held-out train records scored")
    p.add_argument("--lrs", nargs="+", type=float, help="learning rates instead of the mode's grid")
    p.add_argument("--smoke", action="store_true", help="tiny limits; record under benchmarks/runs/")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    prepare(ROOT)
    if args.child:
        mode, lr, out = args.child
        write_json(Path(out, "row.json"), run_row(mode, float(lr), Path(out), args))
        return 0
    stamp = utc_stamp()
    modes = args.only or list(GRIDS)
    rows = run_grid(__file__, modes, lambda m: GRIDS[m][:1] if args.smoke else (args.lrs or GRIDS[m]),
                    RUNS / stamp, ["--model", args.model, "--heldout", str(args.heldout)]
                    + (["--smoke"] if args.smoke else []), key_field="mode")
    from sparseft.utils.env import describe_environment
    from sparseft.utils.hardware import detect

    record = {"experiment": "sweep_chat", "command": "python benchmarks/sweep_chat.py " + " ".join(sys.argv[1:]),
              "date": stamp, "env": describe_environment(), "hardware": detect().to_dict(),
              "data": {"train": "first 300 records of a seeded 90% of dolly_open_qa/train.jsonl (split_seed 1234)",
                       "score": f"response loss on the first {args.heldout} records of the other 10% of "
                                "train.jsonl (never validation.jsonl)"},
              "grids": {m: list(args.lrs or GRIDS[m]) for m in modes},
              "rows": rows, "best": best_per_mode(rows)}
    path = write_json(((RUNS / stamp) if args.smoke else RESULTS) / f"sweep_chat-{stamp}.json", record)
    print(f"wrote {path.relative_to(ROOT)}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

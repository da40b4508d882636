"""Chat SFT benchmark: SmolLM2-135M-Instruct on Dolly open_qa, validation response loss per mode.

Parts (each runs in its own subprocess, so its peak memory is its own):
  base         the model before training: validation response loss / perplexity (+ 3 samples)
  full         full fine-tuning, loss on assistant tokens only (prompt masking on)
  full_nomask  full fine-tuning, loss on every token (prompt masking off, DeepSpeed-Chat parity)
  sparse       sparse fine-tuning, the default mask (fisher), density 1% of the Linear weights (not lm_head)
  lora         LoRA on the same Linear layers, rank chosen so its trainable count is closest to
               sparse's (`lora_dim_for_density: 0.01`); both counts are in the record
Per training part: response loss and perplexity after training, trainable parameters, median
seconds per optimizer step, tokens/s (all tokens in the batch, prompt included), peak memory of
the training phase (CPU: RSS high-water mark reset at the start of training; GPU: allocator
peak) and the whole process's peak RSS (model loading included).

Data (fixed and stated in every record): train = the first `--train-limit` (300) records of
../shared/data/dolly_open_qa/train.jsonl in file order; eval = validation.jsonl, all 374 records
(or the first `--eval-limit`). Template: the model's chat template (ChatML with SmolLM2's default
system prompt). Hyper-parameters, not tuned on validation: 1 epoch, micro-batch 4, max_seq_len
256, warm-up 10%, weight decay 0, no best-checkpoint selection (eval_every never: the reported
loss is the final model's), mixed precision the default ("auto": bf16 where it measures faster);
learning rates = the shipped chat defaults (DEFAULT_LR chat_full / chat_sparse / chat_lora in
sparseft/train/defaults.py), which come from the held-out sweep benchmarks/sweep_chat.py.
For that sweep, `recipe_for` with `heldout=N` in its settings scores on N records held out of
train.jsonl instead of validation.jsonl (no command-line flag: bench_chat's records are always
validation scores).

Usage:
    python benchmarks/bench_chat.py                          # all parts, then a summary
    python benchmarks/bench_chat.py --only base,sparse,lora
    python benchmarks/bench_chat.py --quick                  # 40 train / 40 eval records, 10 steps
    python benchmarks/bench_chat.py --model /tmp/tiny_llama --smoke   # seconds: plumbing check only
Results: benchmarks/results/chat_<part>-<UTC stamp>.json (one record per part, append-only) and
chat_summary-<stamp>.json with the rows and the issue's targets checked. Run folders:
benchmarks/runs/chat/<part>/; `--smoke` records go to benchmarks/runs/chat/smoke_results/ (not results).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sparseft.train.defaults import DEFAULT_LR

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import prepare, utc_stamp, write_json  # noqa: E402
DATA = ROOT.parent / "shared" / "data" / "dolly_open_qa"
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs" / "chat"
PARTS = ("base", "full", "full_nomask", "sparse", "lora")


def recipe_for(part: str, args) -> dict:
    """The recipe of one part (saved in its record; `sparseft run` reproduces it)."""
    data = {"task": "lm", "train": str(DATA / "train.jsonl"), "eval": str(DATA / "validation.jsonl"),
            "train_limit": args.train_limit}
    heldout = getattr(args, "heldout", 0)
    if heldout:   # score on a seeded 10% of train.jsonl (never validation.jsonl)
        data.update(eval="", eval_limit=heldout)
    elif args.eval_limit:
        data["eval_limit"] = args.eval_limit
    stages = [{"name": "data", "method": "chat_data", "max_seq_len": args.max_seq_len,
               "loss_on": "all" if part == "full_nomask" else "assistant",
               **({"eval_fraction": 0.1, "split_seed": 1234} if heldout else {})}]
    evaluate = {"method": "chat_eval", "batch_size": 8}
    if part == "base":
        stages.append({"name": "before", **evaluate, "samples": 3, "generate": {"max_new_tokens": 48}})
    else:
        mode = "full" if part.startswith("full") else part
        train = {"epochs": 1, "max_steps": args.max_steps, "batch_size": args.batch_size, "grad_accum": 1,
                 "lr": {"full": args.lr_full, "sparse": args.lr_sparse, "lora": args.lr_lora}[mode],
                 "weight_decay": 0.0, "warmup_ratio": 0.1, "eval_every": "never", "log_every": 5,
                 "resume": False, "group_by_length": False, "progress": False}
        sft = {"name": "sft", "method": "chat_sft", "mode": mode, "train": train}
        if mode == "sparse":
            sft.update(density=args.density)
        if mode == "lora":
            sft.update(lora_dim_for_density=args.density, lora_module_name="layers.")
        stages += [sft, {"name": "after", **evaluate, "samples": 3, "generate": {"max_new_tokens": 48}}]
    return {"model": args.model, "data": data, "output_dir": str(RUNS / part), "seed": args.seed,
            "stages": stages}


def run_part(part: str, args) -> dict:
    """One part in this process: run its recipe, return its record."""
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run as run_recipe

    raw = recipe_for(part, args)
    shutil.rmtree(raw["output_dir"], ignore_errors=True)  # a fresh run folder (no stale log or checkpoint)
    t0 = time.perf_counter()
    ctx = run_recipe(Recipe.from_dict(raw), print_report=False)
    s = ctx.report.sections
    metrics = {"eval": s.get("after") or s.get("before"), "data": s["data"], "load": s["load"]}
    # the sft stage resets the kernel's RSS high-water mark at its start; the process peak is the
    # larger of the peak before that reset (model loading) and the peak after it
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if "sft" in s:
        metrics["train"] = s["sft"]
        peak = max(peak, s["sft"].get("memory_before_mb") or 0.0)
    return {"experiment": f"chat_{part}", "part": part,
            "command": f"python benchmarks/bench_chat.py --only {part}" + _flags(args),
            "equivalent": f"sparseft run <recipe in this record> (output_dir {raw['output_dir']})",
            "data_subset": (f"train: first {args.train_limit} records of dolly_open_qa/train.jsonl (file order); "
                            f"eval: {'first ' + str(args.eval_limit) if args.eval_limit else 'all'} records of "
                            f"dolly_open_qa/validation.jsonl"),
            "recipe": raw, "env": ctx.report.env, "metrics": metrics,
            "smoke": bool(args.smoke), "process_peak_rss_mb": peak,
            "wall_seconds": time.perf_counter() - t0}


def _flags(args) -> str:
    out = []
    for name in ("model", "train_limit", "eval_limit", "max_steps", "max_seq_len", "batch_size", "density",
                 "lr_full", "lr_sparse", "lr_lora", "seed"):
        value = getattr(args, name)
        if value != DEFAULTS.get(name):
            out.append(f"--{name.replace('_', '-')} {value}")
    return (" " + " ".join(out)) if out else ""


def summarize(records: dict[str, dict]) -> dict:
    """Rows per part plus the issue's targets, computed only from parts that were run."""
    rows = []
    for part, rec in records.items():
        m, train = rec["metrics"], rec["metrics"].get("train", {})
        rows.append({"part": part, "response_loss": m["eval"]["response_loss"], "perplexity": m["eval"]["perplexity"],
                     "trainable_params": train.get("trainable_params"), "steps": train.get("steps"),
                     "seconds_per_step": train.get("seconds_per_step"),
                     "tokens_per_second": train.get("tokens_per_second"),
                     "train_peak_memory_mb": train.get("peak_memory_mb"),
                     "process_peak_rss_mb": rec["process_peak_rss_mb"], "lora_dim": train.get("lora_dim")})
    by = {r["part"]: r for r in rows}
    targets = {}
    if {"full", "sparse"} <= set(by):
        f, s = by["full"], by["sparse"]
        targets["sparse_step_time_vs_full (<= 1.2)"] = s["seconds_per_step"] / f["seconds_per_step"]
        targets["sparse_loss_vs_full (<= 1.02)"] = s["response_loss"] / f["response_loss"]
    if {"lora", "sparse"} <= set(by):
        targets["sparse_peak_memory_vs_lora (<= 1.0)"] = (by["sparse"]["train_peak_memory_mb"]
                                                           / by["lora"]["train_peak_memory_mb"])
        targets["sparse_vs_lora_trainable_count"] = by["sparse"]["trainable_params"] / by["lora"]["trainable_params"]
    if {"full", "full_nomask"} <= set(by):
        targets["masked_minus_unmasked_loss (< 0)"] = by["full"]["response_loss"] - by["full_nomask"]["response_loss"]
    if "base" in by:
        for r in rows:
            r["loss_change_vs_base"] = r["response_loss"] - by["base"]["response_loss"]
    return {"rows": rows, "targets": targets}


def _write(name: str, record: dict, stamp: str, smoke: bool) -> Path:
    folder = RUNS / "smoke_results" if smoke else RESULTS  # a smoke run is a plumbing check, not a result
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{stamp}.json"
    while path.exists():  # append-only: never overwrite an earlier record
        path = path.with_name(path.stem + "_" + path.suffix)
    write_json(path, record)
    return path


DEFAULTS = {"model": "smollm2", "train_limit": 300, "eval_limit": 0, "max_steps": None, "max_seq_len": 256,
            "batch_size": 4, "density": 0.01, "lr_full": DEFAULT_LR["chat_full"],
            "lr_sparse": DEFAULT_LR["chat_sparse"], "lr_lora": DEFAULT_LR["chat_lora"], "seed": 42}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    p.add_argument("--quick", action="store_true", help="40 train / 40 eval records, 10 steps (minutes)")
    p.add_argument("--smoke", action="store_true", help="8 train / 4 eval records, 2 steps (plumbing only)")
    p.add_argument("--model", default=DEFAULTS["model"], help="alias, folder or hub id")
    p.add_argument("--train-limit", type=int, default=DEFAULTS["train_limit"], help="first N train records")
    p.add_argument("--eval-limit", type=int, default=DEFAULTS["eval_limit"], help="first N eval records (0: all)")
    p.add_argument("--max-steps", type=int, default=DEFAULTS["max_steps"], help="optimizer steps (default: 1 epoch)")
    p.add_argument("--max-seq-len", type=int, default=DEFAULTS["max_seq_len"], help="tokens per example")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="micro-batch")
    p.add_argument("--density", type=float, default=DEFAULTS["density"], help="sparse density / LoRA match")
    p.add_argument("--lr-full", type=float, default=DEFAULTS["lr_full"], help="lr for full fine-tuning")
    p.add_argument("--lr-sparse", type=float, default=DEFAULTS["lr_sparse"], help="lr for sparse fine-tuning")
    p.add_argument("--lr-lora", type=float, default=DEFAULTS["lr_lora"], help="lr for LoRA")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--stamp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.train_limit, args.eval_limit, args.max_steps = 40, 40, 10
    if args.smoke:
        args.train_limit, args.eval_limit, args.max_steps, args.max_seq_len = 8, 4, 2, 128
    prepare(ROOT)
    if not (DATA / "train.jsonl").exists():
        print(f"skip: {DATA} not found (../shared/data)", file=sys.stderr)
        return 0
    stamp = args.stamp or utc_stamp()
    if args.one:
        record = run_part(args.one, args)
        print(f"wrote {_write(f'chat_{args.one}', record, stamp, args.smoke).relative_to(ROOT)}")
        return 0
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        print(f"unknown part(s) {unknown}; valid: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    # the children get every setting explicitly (after --quick / --smoke were applied)
    passthrough = [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in DEFAULTS if getattr(args, n) is not None]
    passthrough += ["--smoke"] if args.smoke else []
    records, failed = {}, 0
    for part in parts:
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, __file__, "--one", part, "--stamp", stamp, *passthrough])
        found = sorted((RUNS / "smoke_results" if args.smoke else RESULTS).glob(f"chat_{part}-{stamp}*.json"))
        if rc != 0 or not found:
            failed += 1
            print(f"part {part} failed (rc {rc})", file=sys.stderr)
            continue
        records[part] = json.loads(found[-1].read_text())
        print(f"part {part}: {time.perf_counter() - t0:.0f} s")
    if records:
        summary = {"experiment": "chat_summary", "command": "python " + " ".join(sys.argv),
                   "data_subset": next(iter(records.values()))["data_subset"],
                   "env": next(iter(records.values()))["env"], **summarize(records),
                   "records": {p: f"chat_{p}-{stamp}.json" for p in records}}
        print(f"wrote {_write('chat_summary', summary, stamp, args.smoke).relative_to(ROOT)}")
        for r in summary["rows"]:
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
        print(json.dumps(summary["targets"], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

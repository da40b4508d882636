"""Sparse fine-tuning benchmark: MiniLM on CoNLL-2003 (dev F1) and BANKING77 (held-out accuracy).

Rows: full fine-tuning; SFT with every mask method at density 10%, 1%, 0.1%; LoRA (peft) with
the rank whose trainable count is closest to the SFT count at that density; plus one composition
experiment (a CoNLL diff and a BANKING77 diff, bodies composed with policy "sum" onto one base,
each task re-scored with its own head).

Per row: score, train seconds per epoch, median seconds per step, peak memory (each row runs in
its own subprocess, so the peak is its own: CUDA allocator peak on GPU, peak RSS on CPU),
trainable parameter count, and artifact size on disk (SFT: the diff folder; LoRA: the adapter
folder; full: the model.safetensors of the dense checkpoint, also the reference for ratios).

Data (fixed and stated):
  conll     train = first 2000 sentences of eng.train in file order (`--full-conll`: all 14,041),
            dev = eng.testa (3,250 sentences);
  banking   train.csv minus a seeded 10% held-out slice (split_seed 0, the same split as
            recipes/minilm_banking77_full.yaml), scored on that slice (1,000); the sweep trains
            on the first 2,000 of the remaining 9,003 records (a full-data row per method costs
            ~6 min on 2 cores, too much for a 38-row sweep).
Hyper-parameters are fixed before any run and not tuned on dev: batch 32, epochs 3 (conll) /
5 (banking), warm-up 10%, weight decay 0.01; learning rates: each method's default
(sparseft/train/defaults.py: full 2e-4, SFT and LoRA 3e-3, from the held-out sweep; the wave-1
records of 2026-11-23 ran with 1e-4 / 5e-4 / 5e-4, before that sweep); `--lr-*` flags override.
The full-data headline rows are benchmarks/bench_headline.py's.

Usage:
    python benchmarks/bench_sft.py list                       # the rows, with their ids
    python benchmarks/bench_sft.py run --only conll:full conll:sft:fisher:0.01 conll:lora:0.01
    python benchmarks/bench_sft.py run --only 'banking:*'     # shell-style patterns on row ids
    python benchmarks/bench_sft.py run --only compose
    python benchmarks/bench_sft.py run --smoke --only 'conll:sft:*:0.01'   # seconds, not a result
Results: benchmarks/results/sft-<UTC stamp>.json (one record per row, append-only: never
overwritten) and a markdown table next to it (.md). Run folders go to benchmarks/runs/sft/.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import result_child, write_records  # noqa: E402
RUNS = ROOT / "benchmarks" / "runs" / "sft"
MASKS = ("random", "magnitude", "fisher", "lottery", "regrow", "spiel_ag", "spiel_ma")
DENSITIES = (0.1, 0.01, 0.001)
TASKS = {
    "conll": {"task": "ner", "train": str(DATA / "conll2003" / "eng.train"),
              "eval": str(DATA / "conll2003" / "eng.testa"), "max_length": 128, "train_limit": 2000},
    "banking": {"task": "cls", "train": str(DATA / "banking77" / "train.csv"), "text_col": "text",
                "label_col": "category", "eval_fraction": 0.1, "split_seed": 0, "max_length": 64,
                "train_limit": 2000, "subset_seed": 0},  # seeded 2,000 of the 9,003 (file is sorted by label)
}
EPOCHS = {"conll": 3, "banking": 5}


def rows() -> list[str]:
    out = []
    for task in TASKS:
        out.append(f"{task}:full")
        out += [f"{task}:sft:{m}:{d}" for d in DENSITIES for m in MASKS]
        out += [f"{task}:lora:{d}" for d in DENSITIES]
    return out + ["compose"]


# ---- one row, in its own process -------------------------------------------------------------

def setup(task: str, args):
    from sparseft.load.data import DataConfig, build_task_data
    from sparseft.load.model import load_model, load_tokenizer

    fields = dict(TASKS[task])
    if args.full_conll and task == "conll":
        fields.pop("train_limit", None)
    tok = load_tokenizer("minilm")
    data = build_task_data(DataConfig.from_dict(fields), tok)
    if args.smoke:  # cut after tokenizing, so the label set stays the full one
        data.train, data.eval, data.eval_records = data.train[:64], data.eval[:64], data.eval_records[:64]
    model = load_model("minilm", data.task, labels=data.labels)
    return tok, data, model


def train_config(task: str, kind: str, out: Path, args):
    from sparseft.train.config import TrainConfig

    lr = {"full": args.lr_full, "sft": args.lr_sft, "lora": args.lr_lora}[kind]
    extra = {"max_steps": 3, "eval_every": "never"} if args.smoke else {}
    return TrainConfig(output_dir=str(out), epochs=EPOCHS[task], batch_size=32, lr=lr, warmup_ratio=0.1,
                       weight_decay=0.01, resume=False, progress=False, **extra)


def sft_mask(method: str, density: float, args):
    from sparseft.masks.select import mask_config

    options = {"fisher": {"n_batches": 64}, "lottery": {"steps": 300, "lr": args.lr_full},
               "regrow": {"every": 100, "grad_window": 10, "init": "random"},
               # SpIEL: its defaults (R = 20, rate 0.2 decaying linearly, A = 5), fisher init as the fisher row
               "spiel_ag": {"n_batches": 64}, "spiel_ma": {"n_batches": 64}}.get(method, {})
    if args.smoke:
        options = {k: min(v, 2) if isinstance(v, int) else v for k, v in options.items()}
        if method == "regrow":
            options.update(every=2, grad_window=1)
        if method.startswith("spiel_"):
            options.update(interval=2, **({"accumulation_steps": 1} if method == "spiel_ag" else {}))
    return mask_config(method, density=density, **options)


def linear_targets(model) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "classifier" not in n]


def lora_rank_for(model, density: float) -> int:
    """Rank whose LoRA count (r * (in + out) over the targets) is closest to density * N."""
    mods = [model.get_submodule(n) for n in linear_targets(model)]
    per_rank = sum(m.in_features + m.out_features for m in mods)
    target = density * sum(m.weight.numel() for m in mods)
    return max(1, round(target / per_rank))


def run_row(row: str, args) -> dict:
    import torch

    from sparseft.eval.evaluate import evaluate
    from sparseft.export.sparse_diff import save_diff
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import best_metric_for
    from sparseft.train.loop import train
    from sparseft.utils.io import dir_size_bytes

    torch.manual_seed(0)
    task, kind, *rest = row.split(":")
    out = RUNS / row.replace(":", "_")
    tok, data, model = setup(task, args)
    cfg = train_config(task, kind, out / "train", args)
    collate = PadCollator(tok.pad_token_id)
    metric = best_metric_for(data.task, "auto")
    record: dict = {"row": row, "task": task, "kind": kind}
    # reference: bytes of the dense fp32 tensors (what model.safetensors holds, less its header)
    record["dense_checkpoint_bytes"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    def eval_fn(m):
        return evaluate(m, data, pad_id=tok.pad_token_id, batch_size=128)

    if kind == "sft":
        from sparseft.sft import sparse_finetune

        method, density = rest[0], float(rest[1])
        result, diff = sparse_finetune(model, data.train, cfg, sft_mask(method, density, args),
                                       collate_fn=collate, eval_fn=eval_fn, metric=metric, base_id="minilm")
        save_diff(diff, out / "diff")
        record.update(trainable=diff.count + diff.dense_count, artifact_bytes=dir_size_bytes(out / "diff"),
                      method=method, density=density)
    elif kind == "lora":
        from peft import LoraConfig, get_peft_model

        density = float(rest[0])
        rank = lora_rank_for(model, density)
        lcfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=linear_targets(model),
                          modules_to_save=["classifier"])
        model = get_peft_model(model, lcfg)
        result = train(model, data.train, cfg, collate_fn=collate, eval_fn=eval_fn, metric=metric)
        model.save_pretrained(out / "adapter")
        record.update(trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                      artifact_bytes=dir_size_bytes(out / "adapter"), rank=rank, density=density)
    else:
        result = train(model, data.train, cfg, collate_fn=collate, eval_fn=eval_fn, metric=metric)
        model.save_pretrained(out / "model")
        record.update(trainable=sum(p.numel() for p in model.parameters()),
                      artifact_bytes=dir_size_bytes(out / "model" / "model.safetensors"))
    scores = eval_fn(model)
    record.update(metric=metric[0], score=scores[metric[0]], steps=result.steps,
                  train_seconds=result.train_seconds, epochs=result.epochs_done,
                  seconds_per_epoch=result.train_seconds / max(1, result.epochs_done),
                  seconds_per_step=result.seconds_per_step, peak_memory_mb=result.peak_memory_mb)
    return record


def run_compose(args) -> dict:
    """Train a fisher 1% diff per task, compose the bodies (sum), re-score each task."""
    from sparseft.eval.evaluate import evaluate
    from sparseft.export.sparse_diff import apply_diff_, compose
    from sparseft.load.model import load_model
    from sparseft.load.tokenize import PadCollator
    from sparseft.sft import sparse_finetune
    from sparseft.train.config import best_metric_for

    diffs, setups, record = {}, {}, {"row": "compose", "kind": "compose", "policy": "sum"}
    for task in TASKS:
        tok, data, model = setup(task, args)
        cfg = train_config(task, "sft", RUNS / "compose" / task, args)
        _, diffs[task] = sparse_finetune(model, data.train, cfg, sft_mask("fisher", 0.01, args),
                                         collate_fn=PadCollator(tok.pad_token_id), base_id="minilm")
        setups[task] = (tok, data)
        record[f"{task}_alone"] = evaluate(model, data, pad_id=tok.pad_token_id)[best_metric_for(data.task, "auto")[0]]
    body = compose([d.without_dense() for d in diffs.values()], policy="sum")
    overlap = sum(d.count for d in diffs.values()) - body.count
    record.update(overlap_entries=overlap, composed_count=body.count)
    for task, (tok, data) in setups.items():
        model = load_model("minilm", data.task, labels=data.labels)
        apply_diff_(model, body.only(n for n, _ in model.named_parameters()))  # NER has no pooler
        apply_diff_(model, diffs[task].dense_only())
        record[f"{task}_composed"] = evaluate(model, data, pad_id=tok.pad_token_id)[best_metric_for(data.task, "auto")[0]]
    return record


# ---- driver ----------------------------------------------------------------------------------

def markdown(records: list[dict]) -> str:
    lines = ["| row | score | s/epoch | s/step | peak MB | trainable | artifact MB | % of dense |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.get("kind") == "compose":
            continue
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error'][:60]} | | | | | | |")
            continue
        lines.append(f"| {r['row']} | {r['score']:.4f} | {r['seconds_per_epoch']:.1f} | {r['seconds_per_step']:.3f} | "
                     f"{r['peak_memory_mb']:.0f} | {r['trainable']:,} | {r['artifact_bytes'] / 2**20:.2f} | "
                     f"{100 * r['artifact_bytes'] / r['dense_checkpoint_bytes']:.2f} |")
    for r in records:
        if r.get("kind") == "compose" and "error" not in r:
            lines += ["", "Composition (fisher 1% per task, bodies summed): " + ", ".join(
                f"{t}: alone {r[f'{t}_alone']:.4f} -> composed {r[f'{t}_composed']:.4f}" for t in TASKS)
                + f"; overlapping entries {r['overlap_entries']:,}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["list", "run"], help="list the rows, or run them")
    p.add_argument("--only", nargs="+", default=["*"], help="row ids or shell patterns (default: all)")
    p.add_argument("--full-conll", action="store_true", help="train on all 14,041 CoNLL sentences")
    p.add_argument("--smoke", action="store_true", help="64 examples, 3 steps: checks the plumbing only")
    p.add_argument("--lr-full", type=float, help="learning rate of full fine-tuning (default: the method's)")
    p.add_argument("--lr-sft", type=float, help="learning rate of sparse fine-tuning (default: the method's)")
    p.add_argument("--lr-lora", type=float, help="learning rate of LoRA (default: the method's)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    from sparseft.train.defaults import default_lr

    for kind, method in (("full", "train"), ("sft", "sft"), ("lora", "lora")):
        if getattr(args, f"lr_{kind}") is None:
            setattr(args, f"lr_{kind}", default_lr(method))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.one:  # child process: run one row, print its record as the last line
        record = run_compose(args) if args.one == "compose" else run_row(args.one, args)
        print("RESULT " + json.dumps(record))
        return 0
    selected = [r for r in rows() if any(fnmatch.fnmatch(r, pat) for pat in args.only)]
    if args.action == "list" or not selected:
        print("\n".join(selected or rows()))
        return 0 if selected else 2
    if not all(Path(TASKS[t]["train"]).exists() for t in TASKS):
        print(f"missing data under {DATA}; see shared/data/DATA.md", file=sys.stderr)
        return 2
    from sparseft.utils.env import describe_environment

    env, records = describe_environment(), []
    flags = [f for f in ("--full-conll", "--smoke") if getattr(args, f[2:].replace("-", "_"))]
    flags += [f"--lr-full={args.lr_full}", f"--lr-sft={args.lr_sft}", f"--lr-lora={args.lr_lora}"]
    for row in selected:
        record = result_child(__file__, ["run", "--one", row, *flags], row,
                              smoke=args.smoke, full_conll=args.full_conll,
                              command=f"python benchmarks/bench_sft.py run --only {row} {' '.join(flags)}".strip())
        records.append(record)
        print(json.dumps(record))
    path = write_records(RESULTS, "sft", env, records, markdown(records))
    print(f"wrote {path.relative_to(ROOT)} and {path.with_suffix('.md').name}")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())

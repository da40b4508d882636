"""Sparse fine-tuning through peft + transformers.Trainer vs sparseft's own loop, SHiRA and LoRA.

MiniLM on CoNLL-2003 (the first 2,000 training sentences in file order, dev = eng.testa), every
row trained by `transformers.Trainer` except `loop:*` (sparseft's `sparse_finetune`):

    peft:magnitude:D   get_peft_model(SparseFTConfig(density=D, mask="magnitude")) + Trainer
    peft:fisher:D      the same with mask="fisher" (64 batches) selected by SparseFTCallback
    loop:fisher:D      sparse_finetune (sparseft's loop) with the same fisher mask, for reference
    shira:D            peft's SHiRA at the rank whose r*(in+out) count is closest to D*N (random mask)
    lora:D             peft LoRA at that rank

All train the new classifier densely (modules_to_save / heads), 3 epochs, batch 32, lr 5e-4,
10% warm-up, weight decay 0.01, seed 0; hyper-parameters fixed before any run, not tuned on dev.
Per row: dev entity F1, train seconds, seconds per step, peak RSS of the row's own process (each
row runs in a subprocess), trainable parameters, adapter / diff size on disk.

Usage:
    python benchmarks/bench_peft_sft.py list
    python benchmarks/bench_peft_sft.py run                         # every row (~25 min on 2 cores)
    python benchmarks/bench_peft_sft.py run --only 'peft:*' shira:0.01
    python benchmarks/bench_peft_sft.py run --smoke --only 'peft:*'  # seconds: plumbing only, not a result
Results: benchmarks/results/peft_sft-<UTC stamp>.json (+ .md); run folders in benchmarks/runs/peft_sft/.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "conll2003"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import result_child, write_records  # noqa: E402
RUNS = ROOT / "benchmarks" / "runs" / "peft_sft"
DENSITIES = (0.01,)
EPOCHS, BATCH, LR = 3, 32, 5e-4


def rows() -> list[str]:
    return [f"{kind}:{d}" for d in DENSITIES
            for kind in ("peft:magnitude", "peft:fisher", "loop:fisher", "shira", "lora")]


def setup(args):
    from sparseft.load.data import DataConfig, build_task_data
    from sparseft.load.model import load_model, load_tokenizer

    tok = load_tokenizer("minilm")
    data = build_task_data(DataConfig(task="ner", train=str(DATA / "eng.train"), eval=str(DATA / "eng.testa"),
                                      max_length=128, train_limit=2000), tok)
    if args.smoke:
        data.train, data.eval, data.eval_records = data.train[:64], data.eval[:64], data.eval_records[:64]
    return tok, data, load_model("minilm", "ner", labels=data.labels)


def linear_targets(model) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "classifier" not in n]


def rank_for(model, density: float) -> int:
    mods = [model.get_submodule(n) for n in linear_targets(model)]
    return max(1, round(density * sum(m.weight.numel() for m in mods) / sum(m.in_features + m.out_features
                                                                           for m in mods)))


def trainer_args(out: Path, args):
    from transformers import TrainingArguments

    extra = {"max_steps": 3} if args.smoke else {}
    return TrainingArguments(str(out), num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH, learning_rate=LR,
                             warmup_steps=0.1, weight_decay=0.01, save_strategy="no", report_to="none",
                             logging_steps=50, seed=0, disable_tqdm=True, **extra)


def run_row(row: str, args) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import Trainer

    from sparseft.eval.evaluate import evaluate
    from sparseft.load.tokenize import PadCollator
    from sparseft.utils.io import dir_size_bytes

    torch.manual_seed(0)
    kind, density = row.rsplit(":", 1)
    density = float(density)
    out = RUNS / row.replace(":", "_")
    tok, data, model = setup(args)
    collate = PadCollator(tok.pad_token_id)
    record: dict = {"row": row, "kind": kind, "density": density}
    if kind == "loop:fisher":
        from sparseft.export.sparse_diff import save_diff
        from sparseft.masks.select import mask_config
        from sparseft.sft import sparse_finetune
        from sparseft.train.config import TrainConfig

        extra = {"max_steps": 3} if args.smoke else {}
        cfg = TrainConfig(output_dir=str(out / "train"), epochs=EPOCHS, batch_size=BATCH, lr=LR, warmup_ratio=0.1,
                          weight_decay=0.01, resume=False, progress=False, eval_every="never", **extra)
        result, diff = sparse_finetune(model, data.train, cfg, mask_config("fisher", density=density,
                                                                           n_batches=2 if args.smoke else 64),
                                       collate_fn=collate, base_id="minilm")
        save_diff(diff, out / "diff")
        record.update(trainable=diff.count + diff.dense_count, artifact_bytes=dir_size_bytes(out / "diff"),
                      train_seconds=result.train_seconds, steps=result.steps)
        merged = model
    else:
        callbacks = []
        if kind.startswith("peft:"):
            from sparseft.integrations import SparseFTCallback, SparseFTConfig

            mask = kind.split(":")[1]
            options = {"n_batches": 2 if args.smoke else 64} if mask == "fisher" else {}
            pcfg = SparseFTConfig(density=density, mask=mask, mask_options=options, task_type="TOKEN_CLS")
            callbacks = [SparseFTCallback()]
        elif kind == "shira":
            from peft import ShiraConfig

            pcfg = ShiraConfig(r=rank_for(model, density), target_modules=linear_targets(model),
                               modules_to_save=["classifier"], random_seed=0)
            record["rank"] = pcfg.r
        else:
            from peft import LoraConfig

            r = rank_for(model, density)
            pcfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=linear_targets(model),
                              modules_to_save=["classifier"])
            record["rank"] = r
        model = get_peft_model(model, pcfg)
        trainer = Trainer(model=model, args=trainer_args(out / "trainer", args), train_dataset=data.train,
                          data_collator=collate, callbacks=callbacks)
        t0 = time.perf_counter()
        trainer.train()
        record.update(train_seconds=time.perf_counter() - t0, steps=trainer.state.global_step,
                      trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))
        model.save_pretrained(out / "adapter")
        record["artifact_bytes"] = dir_size_bytes(out / "adapter")
        merged = model.merge_and_unload()
    scores = evaluate(merged, data, pad_id=tok.pad_token_id, batch_size=128)
    record.update(f1=scores["f1"], seconds_per_step=record["train_seconds"] / max(1, record["steps"]),
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return record


def markdown(records: list[dict]) -> str:
    lines = ["| row | dev F1 | train s | s/step | peak RSS MB | trainable | artifact MB |", "|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error'][:60]} | | | | | |")
            continue
        lines.append(f"| {r['row']} | {r['f1']:.4f} | {r['train_seconds']:.0f} | {r['seconds_per_step']:.3f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['trainable']:,} | {r['artifact_bytes'] / 2**20:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["list", "run"], help="list the rows, or run them")
    p.add_argument("--only", nargs="+", default=["*"], help="row ids or shell patterns (default: all)")
    p.add_argument("--smoke", action="store_true", help="64 examples, 3 steps: checks the plumbing only")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.one:  # child process: one row, its record as the last line
        print("RESULT " + json.dumps(run_row(args.one, args)))
        return 0
    selected = [r for r in rows() if any(fnmatch.fnmatch(r, pat) for pat in args.only)]
    if args.action == "list" or not selected:
        print("\n".join(selected or rows()))
        return 0 if selected else 2
    if not (DATA / "eng.train").exists():
        print(f"missing data under {DATA}; see shared/data/DATA.md", file=sys.stderr)
        return 2
    from sparseft.utils.env import describe_environment

    env, records = describe_environment(), []
    flags = ["--smoke"] if args.smoke else []
    for row in selected:
        record = result_child(__file__, ["run", "--one", row, *flags], row,
                              smoke=args.smoke,
                              command=f"python benchmarks/bench_peft_sft.py run --only {row} {' '.join(flags)}".strip())
        records.append(record)
        print(json.dumps(record))
    path = write_records(RESULTS, "peft_sft", env, records, markdown(records))
    print(f"wrote {path.relative_to(ROOT)} and {path.with_suffix('.md').name}")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Multi-task benchmark: one MiniLM backbone with task experts vs 3 full fine-tunes vs 3 sparse diffs.

    python benchmarks/bench_task_experts.py                           # all data, 3 systems (see estimate below)
    python benchmarks/bench_task_experts.py --train-limit 2000        # sweep size: 2,000 training rows per task
    python benchmarks/bench_task_experts.py --systems experts sft --epochs 3
    python benchmarks/bench_task_experts.py --smoke                   # tiny random BERT, 32 rows per task, < 60 s

Tasks (../shared/data, see DATA.md): SST-2 (sentiment, 2 classes; dev = a seeded 2% held out of
train, which overestimates accuracy: SST-2 train repeats sub-phrases), AG News (topic, 4 classes;
the 5,200 / 800 resplit), BANKING77 (intent, 77 classes; dev = a seeded 10% of train).

Systems, all on MiniLM (the `minilm` alias) and the same tokenized data:
  experts  ONE backbone, per-task sparse diffs as experts routed by task id (sparseft.experts
           .multitask): each task a `--density` (1%) Fisher mask of its own, its own head; one run
           with L = sum_k L_k, one batch per task per step, `--sampling` (default proportional:
           the same examples per epoch as the separate runs).
  full     three separately full-fine-tuned MiniLMs (sparseft.train.loop.train).
  sft      three 1% sparse diffs (Fisher masks) on one base, trained one after the other
           (sparseft.sft.sparse_finetune).

Per system: each task's dev accuracy, total training time (mask selection included), total
parameters stored (full: 3 whole models; experts / sft: the base once + per task its values,
positions and head) and that total over one model's size (the target: <= 1.3x vs 3x).

Runtime estimate on 2 CPU cores (MiniLM-L6, batch 32): ~65 training examples/s (the
banking77_full record: 45k examples in 704 s), the sparse systems about as fast (their backward
still forms each layer's dense gradient). `--train-limit 2000 --epochs 2` = 12k examples per
system: ~3-4 min each, ~12-15 min for all three with Fisher scoring and evaluation (3,147 dev
rows per system). The full data (~80k training rows per epoch, SST-2's 66k dominate) is ~20 min
per system and epoch: ~2 h for the three systems at the default 2 epochs. Results (one record,
rows per system; summarize.py renders them): benchmarks/results/task_experts-<UTC>.json;
`--smoke`: benchmarks/runs/task_experts_quick/results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import prepare, write_json  # noqa: E402
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
SYSTEMS = ("experts", "full", "sft")
TASKS = {
    "sst2": {"task": "cls", "train": str(DATA / "sst2" / "train.tsv"), "format": "tsv", "text_col": "text",
             "label_col": "label", "eval_fraction": 0.02, "split_seed": 0},
    "ag_news": {"task": "cls", "train": str(DATA / "ag_news" / "train.csv"),
                "eval": str(DATA / "ag_news" / "validation.csv"), "format": "csv",
                "columns": ["label", "title", "description"], "text_col": ["title", "description"],
                "label_col": "label"},
    "banking77": {"task": "cls", "train": str(DATA / "banking77" / "train.csv"), "text_col": "text",
                  "label_col": "category", "eval_fraction": 0.1, "split_seed": 0},
}


def task_data(args, tok) -> dict:
    """{task: TaskData}; --train-limit takes a seeded sample (BANKING77 is sorted by label)."""
    from sparseft.load.data import DataConfig, build_task_data

    out = {}
    for name, fields in TASKS.items():
        fields = {**fields, "max_length": args.max_length}
        if args.train_limit:
            fields.update(train_limit=args.train_limit, subset_seed=0)
        if args.eval_limit:
            fields["eval_limit"] = args.eval_limit
        out[name] = build_task_data(DataConfig.from_dict(fields), tok, labels=labels(name))
    return out


def labels(task: str) -> list[str]:
    """The full label set (a --train-limit sample may miss some of BANKING77's 77 intents)."""
    if task == "banking77":
        return json.loads((DATA / "banking77" / "categories.json").read_text())
    return {"sst2": ["0", "1"], "ag_news": ["1", "2", "3", "4"]}[task]


def accuracy(forward, feats, collate, bs: int = 64) -> float:
    from sparseft.experts.task_data import task_accuracy

    return task_accuracy(forward, feats, collate, batch_size=bs)


def train_cfg(args, out: Path, lr: float, n_examples: int):
    """One task's TrainConfig; a fractional --epochs becomes whole epochs capped by max_steps."""
    import math

    from sparseft.train.config import TrainConfig

    extra = {"max_steps": 3} if args.smoke else {}
    if not args.smoke and args.epochs != int(args.epochs):
        extra["max_steps"] = max(1, round(args.epochs * n_examples / args.batch_size))
    return TrainConfig(output_dir=str(out), epochs=math.ceil(args.epochs), batch_size=args.batch_size, lr=lr,
                       warmup_ratio=0.06, weight_decay=0.0, resume=False, progress=False, eval_every="never",
                       mixed_precision="no", **extra)


def fisher(args, density: float):
    from sparseft.masks.select import mask_config

    return mask_config("fisher", density=density, n_batches=2 if args.smoke else args.fisher_batches)


def base_params(model) -> int:
    from sparseft.masks.config import DEFAULT_HEADS

    return sum(p.numel() for n, p in model.named_parameters() if not n.split(".")[0] in DEFAULT_HEADS)


def run_full(args, data, tok, model_name, tmp) -> dict:
    import torch

    from sparseft.load.model import load_model
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.loop import train

    collate, acc, stored, seconds = PadCollator(tok.pad_token_id or 0), {}, 0, 0.0
    for task, d in data.items():
        torch.manual_seed(0)
        model = load_model(model_name, "cls", labels=d.labels)
        t0 = time.perf_counter()
        train(model, d.train, train_cfg(args, Path(tmp) / f"full_{task}", args.lr_full, len(d.train)), collate_fn=collate)
        seconds += time.perf_counter() - t0
        model.eval()
        acc[task] = accuracy(lambda b, m=model: m(**b).logits, d.eval, collate)
        stored += sum(p.numel() for p in model.parameters())
        one = base_params(model)
    return {"accuracy": acc, "train_seconds": seconds, "stored_params": stored, "one_model_params": one}


def run_sft(args, data, tok, model_name, tmp) -> dict:
    import torch

    from sparseft.load.model import load_model
    from sparseft.load.tokenize import PadCollator
    from sparseft.sft import sparse_finetune

    collate, acc, seconds, per_task = PadCollator(tok.pad_token_id or 0), {}, 0.0, {}
    for task, d in data.items():
        torch.manual_seed(0)
        model = load_model(model_name, "cls", labels=d.labels)
        one = base_params(model)
        t0 = time.perf_counter()
        _, diff = sparse_finetune(model, d.train, train_cfg(args, Path(tmp) / f"sft_{task}", args.lr_sparse, len(d.train)),
                                  fisher(args, args.density), collate_fn=collate)
        seconds += time.perf_counter() - t0
        model.eval()
        acc[task] = accuracy(lambda b, m=model: m(**b).logits, d.eval, collate)
        per_task[task] = {"delta": diff.count, "head": diff.dense_count}
    stored = one + sum(2 * c["delta"] + c["head"] for c in per_task.values())
    return {"accuracy": acc, "train_seconds": seconds, "stored_params": stored, "one_model_params": one,
            "task_params": per_task}


def run_experts(args, data, tok, model_name, tmp) -> dict:
    import torch

    from sparseft.compress.calibration import calibration_batches
    from sparseft.experts.multitask import build_task_experts
    from sparseft.experts.task_config import TaskExpertsConfig
    from sparseft.experts.task_train import train_tasks
    from sparseft.export.task_experts import save_task_experts
    from sparseft.load.model import load_model
    from sparseft.load.tokenize import PadCollator
    from sparseft.utils.io import dir_size_bytes

    pad = tok.pad_token_id or 0
    collate = PadCollator(pad)
    torch.manual_seed(0)
    first = next(iter(data.values()))
    model = load_model(model_name, "cls", labels=first.labels)
    n_fisher = 2 if args.smoke else args.fisher_batches
    cfg = TaskExpertsConfig(mask="fisher", density=args.density, mask_args={"n_batches": n_fisher},
                            sampling=args.sampling, temperature=args.temperature, batch_size=args.batch_size,
                            epochs=args.epochs, steps=3 if args.smoke else 0, lr=args.lr_sparse, log_every=50)
    t0 = time.perf_counter()
    batches = {t: calibration_batches(d.train, pad, n_fisher * args.batch_size, args.batch_size)
               for t, d in data.items()}
    mt = build_task_experts(model, {t: d.labels for t, d in data.items()}, cfg, batches=batches)
    result = train_tasks(mt, {t: d.train for t, d in data.items()}, cfg, collate_fn=collate,
                         eval_data={t: d.eval for t, d in data.items()},
                         log=lambda r: print(json.dumps(r), flush=True))
    seconds = time.perf_counter() - t0
    counts = {t: mt.task_parameter_count(t) for t in mt.tasks}
    one = sum(t.numel() for t in mt.base_tensors().values())
    stored = one + sum(2 * c["delta"] + c["head"] for c in counts.values())
    art = save_task_experts(mt, Path(tmp) / "experts", base_model=model_name, config=cfg)
    return {"accuracy": result["eval"], "train_seconds": seconds, "stored_params": stored, "one_model_params": one,
            "task_params": counts, "steps": result["steps"], "batch_sizes": result["batch_sizes"],
            "first_losses": result["first_losses"], "last_losses": result["last_losses"],
            "artifact_bytes_without_base": dir_size_bytes(art)}


def tiny_minilm(tmp: str) -> str:
    """A 2-layer, 32-wide random BERT with MiniLM's tokenizer (--smoke only)."""
    import torch
    from transformers import BertConfig, BertModel

    from sparseft.load.model import load_tokenizer

    tok = load_tokenizer("minilm")
    path = Path(tmp) / "tiny_minilm"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def main() -> int:
    from sparseft.train.defaults import DEFAULT_LR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="which systems to run")
    p.add_argument("--train-limit", type=int, help="training rows per task (seeded sample; labelled in the record)")
    p.add_argument("--eval-limit", type=int, help="dev rows per task (the first N)")
    p.add_argument("--epochs", type=float, default=2, help="epochs over each task's training data")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (per task per step for experts)")
    p.add_argument("--max-length", type=int, default=96, help="token limit per example")
    p.add_argument("--density", type=float, default=0.01, help="sparse diff density per task (experts, sft)")
    p.add_argument("--fisher-batches", type=int, default=16, help="batches scored by the Fisher masks")
    p.add_argument("--sampling", default="proportional", choices=("uniform", "proportional", "temperature"),
                   help="task sampling of the experts run")
    p.add_argument("--temperature", type=float, default=2.0, help="T of --sampling temperature")
    p.add_argument("--lr-full", type=float, default=DEFAULT_LR["train"],
                   help="full fine-tuning learning rate (default: the `train` default, sparseft.train.defaults)")
    p.add_argument("--lr-sparse", type=float, default=DEFAULT_LR["sft"],
                   help="sparse diffs / task experts learning rate (default: the `sft` default)")
    p.add_argument("--smoke", action="store_true", help="tiny random BERT, 32 rows per task, 3 steps: < 60 s")
    args = p.parse_args()
    prepare(ROOT)
    from sparseft.load.model import load_tokenizer

    if args.smoke:
        args.train_limit, args.eval_limit, args.batch_size = args.train_limit or 32, args.eval_limit or 16, 8
    t_start = time.perf_counter()
    rows = {}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    folder = (ROOT / "benchmarks" / "runs" / "task_experts_quick" / "results") if args.smoke else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"task_experts-{stamp}.json"
    with tempfile.TemporaryDirectory() as tmp:
        model_name = tiny_minilm(tmp) if args.smoke else "minilm"
        tok = load_tokenizer(model_name)
        data = task_data(args, tok)
        for system in args.systems:       # the record is rewritten after every system
            fn = {"experts": run_experts, "full": run_full, "sft": run_sft}[system]
            row = fn(args, data, tok, model_name, tmp)
            row["stored_vs_one_model"] = row["stored_params"] / row["one_model_params"]
            rows[system] = row
            print(system, json.dumps({k: row[k] for k in ("accuracy", "train_seconds", "stored_vs_one_model")}),
                  flush=True)
            write_record(path, args, data, rows, t_start)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


def write_record(path: Path, args, data: dict, rows: dict, t_start: float) -> None:
    """The JSON record with the systems run so far (`complete`: every system of --systems)."""
    import torch

    from sparseft.utils.env import describe_environment
    from sparseft.utils.hardware import detect

    table = [{"system": system, **{f"{t}_accuracy": acc for t, acc in row["accuracy"].items()},
              "train_seconds": row["train_seconds"], "stored_params": row["stored_params"],
              "stored_vs_one_model": row["stored_vs_one_model"]} for system, row in rows.items()]
    record = {"experiment": "task_experts", "command": " ".join(["python", "benchmarks/bench_task_experts.py",
                                                                 *sys.argv[1:]]),
              "quick": bool(args.smoke), "train_limit": args.train_limit, "eval_limit": args.eval_limit,
              "complete": len(rows) == len(args.systems), "runs_done": len(rows), "runs_planned": len(args.systems),
              "args": vars(args), "examples": {t: {"train": len(d.train), "eval": len(d.eval), "labels": len(d.labels)}
                                               for t, d in data.items()},
              "env": describe_environment(), "hardware": detect().to_dict(),
              "torch_threads": torch.get_num_threads(), "wall_seconds": time.perf_counter() - t_start,
              "rows": table, "details": rows,
              "notes": "stored_params counts the base once plus, per task, values + positions + head (sparse) or "
                       "every parameter of every model (full); SST-2 dev is held out of train (overlapping "
                       "sub-phrases: optimistic)."}
    write_json(path, record)


if __name__ == "__main__":
    sys.exit(main())

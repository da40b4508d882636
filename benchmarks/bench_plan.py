"""Memory planner check: `sparseft plan`'s per-device total vs the measured peak of our own runs.

For each (model, mode) a fresh subprocess loads the model (MiniLM: a 2-label classifier; SmolLM2:
the causal LM), trains `--steps` optimizer steps with sparseft's loop on random token batches of
exactly `--batch-size` x `--seq-len` (no padding, so the planner's sequence length is the real
one; full / sparse (magnitude mask, `--density`) / LoRA (peft, rank `--rank` on the blocks' Linear
layers)), and reads the kernel's RSS high-water mark (VmHWM) at the start of every step's forward
(so the last reading covers the earlier steps completely, optimizer step included, and never the
checkpoint the loop writes at the end). The mark is reset at the first forward: mask selection,
the loop's set-up (Accelerate, hashing the inputs) are set-up phases, not training.

What is compared (they model different things, so the difference is taken out explicitly):
  planner   tensors only: weights + optimizer + max(gradients, activations) (+ transients), for
            one process (`ddp`, 1 device), fp32.
  measured  peak RSS during training - (RSS after loading - bytes of the loaded parameters and
            buffers). The subtracted part is the process baseline the planner does not model:
            the Python interpreter, torch / transformers / peft / Accelerate code and state, the
            autograd engine and kernel libraries (all warmed up before the baseline by one step of
            the same mode on a 1-block, 32-wide model of the same class), allocator arenas, and
            the file pages of a mmapped GGUF. What remains still includes glibc's freed-but-kept
            memory (kept small: the workers run with MALLOC_MMAP_THRESHOLD_=131072, so freed
            tensors are returned to the kernel) and the data batch; a ratio measured/planned within [0.8, 1.2] passes.

Usage (2 CPU cores, idle machine):
    python benchmarks/bench_plan.py                       # minilm + smollm2 x full/sparse/lora, ~5 min
    python benchmarks/bench_plan.py --models smollm2 --modes sparse --steps 4
    python benchmarks/bench_plan.py --smoke               # seconds: tiny batch, 2 steps, no result file
Results: benchmarks/results/plan-<UTC stamp>.json (one record per row; not written with --smoke).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TASK = {"minilm": "cls", "smollm2": "lm"}
# A fixed glibc mmap threshold (128 KiB) switches off its dynamic threshold, so freed tensors go
# back to the kernel at once and RSS follows live memory instead of keeping freed heap blocks.
WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _status_mb(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) / 1024


def run_mode(model, mode: str, data: list, collate, loss_fn, args, steps: int) -> float:
    """Train `model` for `steps` optimizer steps in `mode`; returns seconds."""
    import torch

    from sparseft.train.config import TrainConfig
    from sparseft.train.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(output_dir=tmp, max_steps=steps, batch_size=args.batch_size, lr=1e-4,
                          mixed_precision="no", eval_every="never", progress=False, group_by_length=False,
                          resume=False, log_every=1)
        t0 = time.perf_counter()
        if mode == "full":
            train(model, data, cfg, collate_fn=collate, loss_fn=loss_fn)
        elif mode == "sparse":
            from sparseft.masks.magnitude import MagnitudeMaskConfig
            from sparseft.sft.api import sparse_finetune

            sparse_finetune(model, data, cfg, MagnitudeMaskConfig(density=args.density), collate_fn=collate,
                            loss_fn=loss_fn, heads=[])
        else:
            from peft import LoraConfig, get_peft_model

            names = [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)
                     and re.search(r"\.(layers?)\.\d+\.", n)]
            for p in model.parameters():
                p.requires_grad_(False)
            peft_model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=names))
            train(peft_model, data, cfg, collate_fn=collate, loss_fn=loss_fn)
        return time.perf_counter() - t0


def tiny_copy(model):
    """A 1-block, 32-wide random model of the same class (for the runtime warm-up)."""
    cfg = model.config.__class__(**{**model.config.to_dict(), "hidden_size": 32, "intermediate_size": 64,
                                    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                    "head_dim": 16})
    return type(model)(cfg)


def worker(model_name: str, mode: str, args) -> dict:
    """One measured run in this (fresh) process; returns the record."""
    import torch

    from sparseft.load.model import load_model
    from sparseft.plan.memory import PlanInput, plan_row
    from sparseft.plan.shapes import shape_of
    from sparseft.train.loop import default_loss

    torch.manual_seed(0)
    task = TASK[model_name]
    model = load_model(model_name, task, labels=["a", "b"] if task == "cls" else None)
    shape = shape_of(model, model.config, model_name)
    vocab = model.config.vocab_size
    data = []
    for i in range(args.batch_size * (args.steps + 1)):
        ids = torch.randint(5, vocab, (args.seq_len,), generator=torch.Generator().manual_seed(i)).tolist()
        data.append({"input_ids": ids, "attention_mask": [1] * args.seq_len,
                     "labels": ids if task == "lm" else i % 2})

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}

    # runtime warm-up before the baseline: the same mode's code path (imports, Accelerate state,
    # autograd engine, loader, kernels) for 1 step on a tiny model of the same class, then freed
    run_mode(tiny_copy(model), mode, data[:args.batch_size], collate, default_loss, args, 1)
    gc.collect()
    with torch.no_grad():  # weights loaded from a mmapped safetensors file become resident when first
        for t in [*model.parameters(), *model.buffers()]:  # read: read them all before the baseline
            t.sum()
    loaded_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    rss_loaded = _status_mb("VmRSS")
    readings: list[float] = []

    def loss_fn(m, batch):  # the high-water mark at the start of every forward
        if not readings:  # the first forward: reset VmHWM to the current RSS (set-up transients
            Path("/proc/self/clear_refs").write_text("5")  # such as mask scores are not training)
        readings.append(_status_mb("VmHWM"))
        return default_loss(m, batch)

    seconds = run_mode(model, mode, data, collate, loss_fn, args, args.steps)
    baseline = rss_loaded - loaded_bytes / 2**20
    measured = max(readings) - baseline
    inp = PlanInput(mode=mode, density=args.density, rank=args.rank, devices=1, batch_size=args.batch_size,
                    seq_len=args.seq_len, base_dtype="fp32", act_dtype="fp32")
    row = plan_row(shape, inp, "ddp")
    planned = row.total / 2**20
    return {"model": model_name, "mode": mode, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "steps": args.steps, "density": args.density if mode == "sparse" else None,
            "rank": args.rank if mode == "lora" else None,
            "planned_mb": planned, "planned_parts_mb": {k: getattr(row, k) / 2**20 for k in
                                                         ("weights", "gradients", "optimizer", "activations",
                                                          "transient")},
            "measured_mb": measured, "peak_rss_mb": max(readings), "rss_after_load_mb": rss_loaded,
            "loaded_tensor_mb": loaded_bytes / 2**20, "baseline_mb": baseline, "ratio": measured / planned,
            "within_20pct": 0.8 <= measured / planned <= 1.2, "train_seconds": seconds}


def plan_record(records: list[dict], command: str, env: dict) -> dict:
    """A rows record for BENCHMARKS.md: one row per (model, mode), planner parts as columns."""
    rows = []
    for r in records:
        parts = r.get("planned_parts_mb") or {}
        rows.append({"row": f"{r.get('model')} {r.get('mode')}", "planned_mb": r.get("planned_mb"),
                     **{f"planned_{k}_mb": v for k, v in parts.items()}, "measured_mb": r.get("measured_mb"),
                     "ratio": r.get("ratio"), "within_20pct": r.get("within_20pct"), "error": r.get("error"),
                     "peak_rss_mb": r.get("peak_rss_mb"), "baseline_mb": r.get("baseline_mb")})
    first = records[0] if records else {}
    return {"experiment": "plan_check", "command": command, "env": env, "records_raw": records, "rows": rows,
            "data": (f"random token batches of {first.get('batch_size')} x {first.get('seq_len')}, "
                     f"{first.get('steps')} optimizer steps, 1 process, fp32; measured = peak RSS during training "
                     f"- process baseline (RSS after loading - loaded tensor bytes)")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="minilm,smollm2")
    p.add_argument("--modes", default="full,sparse,lora")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps (readings cover steps 1..steps-1)")
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--smoke", action="store_true", help="batch 1 x 16 tokens, 2 steps, minilm only; no record")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.seq_len, args.steps = 1, 16, 2
        if "--models" not in (argv or sys.argv):
            args.models = "minilm"
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, args)))
        return 0
    from benchlib import write_json
    from sparseft.utils.env import describe_environment

    flags = [f"--batch-size={args.batch_size}", f"--seq-len={args.seq_len}", f"--steps={args.steps}",
             f"--density={args.density}", f"--rank={args.rank}"]
    records = []
    for model_name in args.models.split(","):
        for mode in args.modes.split(","):
            proc = subprocess.run([sys.executable, __file__, "--worker", model_name, mode, *flags],
                                  capture_output=True, text=True, env=WORKER_ENV)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            record = json.loads(lines[-1][7:]) if proc.returncode == 0 and lines else {
                "model": model_name, "mode": mode, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            record["smoke"] = args.smoke
            records.append(record)
            if "error" in record:
                print(f"{model_name:8s} {mode:6s} ERROR {record['error']}")
            else:
                print(f"{model_name:8s} {mode:6s} planned {record['planned_mb']:8.1f} MB  measured "
                      f"{record['measured_mb']:8.1f} MB  ratio {record['ratio']:.3f}  "
                      f"{'ok' if record['within_20pct'] else 'OUTSIDE 20%'}")
    if not args.smoke:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"plan-{stamp}.json"
        write_json(path, plan_record(records, " ".join(["python", "benchmarks/bench_plan.py", *sys.argv[1:]]),
                                     describe_environment()))
        print(f"wrote {path.relative_to(ROOT)}")
    return 1 if any("error" in r or not r.get("within_20pct", False) for r in records if not args.smoke) else 0


if __name__ == "__main__":
    sys.exit(main())

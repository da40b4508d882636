"""`sparseft plan MODEL`: per-device memory of fine-tuning under DDP / FSDP / ZeRO, no weights loaded.

    sparseft plan llama-3-8b --mode sparse --density 0.01 --devices 8 --batch-size 1 --seq-len 2048
    sparseft plan llama-3-70b --mode lora --rank 16 --devices 8 --dtype bf16 --gradient-checkpointing
    sparseft plan path/to/config.json --mode full --json
"""

from __future__ import annotations

import argparse
import json

from sparseft.cli.common import HelpFormatter, add_model_arg, resolve_model_arg
from sparseft.plan.memory import MODES, STRATEGIES


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="memory planner: per-device memory for full / sparse / LoRA fine-tuning",
                       description="Per-device memory (weights, gradients, optimizer state, activations) of "
                                   "fine-tuning MODEL under DDP, FSDP and DeepSpeed ZeRO-2/3 (+ offload), from its "
                                   "config alone. MODEL: llama-3-8b, llama-3-70b, llama-3.2-1b (bundled), a "
                                   "config.json, a model folder, a .gguf file or an alias (minilm, smollm2).",
                       formatter_class=HelpFormatter)
    add_model_arg(p, positional=True, required=True,
                  help="bundled config name, config.json, model folder, .gguf or alias")
    p.add_argument("--mode", default="full,sparse,lora",
                   help=f"comma-separated modes out of {', '.join(MODES)}")
    p.add_argument("--density", type=float, default=0.01, help="sparse: share of the Linear weights trained")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank on every Linear of the blocks")
    p.add_argument("--devices", type=int, default=8, help="devices (processes) the run is sharded over")
    p.add_argument("--batch-size", "--per_device_train_batch_size", dest="batch_size", type=int, default=1,
                   help="micro-batch per device")
    p.add_argument("--seq-len", "--max-length", "--max_length", dest="seq_len", type=int, default=2048,
                   help="tokens per sequence")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16",
                   help="frozen-weight dtype and activation dtype (trainable tensors stay fp32 except in full "
                        "mode, where the model itself has this dtype)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa",
                   help="eager attention also stores the seq x seq scores")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated strategies")
    p.add_argument("--json", action="store_true", help="print JSON rows (bytes) instead of tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from sparseft.plan import PlanInput, format_table, model_shape, plan

    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(f"unknown strategies {bad}; valid: {', '.join(STRATEGIES)}")
    shape = model_shape(resolve_model_arg(args))
    out = []
    for mode in modes:
        inp = PlanInput(mode=mode, density=args.density, rank=args.rank, devices=args.devices,
                        batch_size=args.batch_size, seq_len=args.seq_len, base_dtype=args.dtype, act_dtype=args.dtype,
                        gradient_checkpointing=args.gradient_checkpointing, attention=args.attention)
        rows = plan(shape, inp, strategies)
        if args.json:
            out.append({"input": asdict(inp), "rows": [{**asdict(r), "total": r.total} for r in rows]})
        else:
            print(format_table(shape, inp, rows) + "\n")
    if args.json:
        print(json.dumps({"model": asdict(shape), "plans": out}, indent=2))
    return 0

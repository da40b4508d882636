"""Checkpoint cost: lean checkpoints and the run-identity hash on real model shapes.

Rows = model x mode, each in its own process (so peak RSS is the row's own):

    minilm:full  minilm:sparse  minilm:lora      (MiniLM-L6 NER head, 22M parameters)
    smollm2:full smollm2:sparse smollm2:lora     (SmolLM2-135M causal LM, dequantized to fp32)

    full    every parameter trainable
    sparse  SparseDelta wrappers on every Linear except heads at density 1% (random mask; the
            mask method does not change checkpoint sizes), the new head dense
    lora    peft LoRA rank 8 on every Linear except heads

Per row, after one AdamW step on a random batch (so the optimizer state exists): seconds to
build the run identity (sha256 over the weights + 256 token features), to save a checkpoint
(`save_checkpoint`: trainable.safetensors, optimizer, scheduler, RNG, state.json, manifest with
sha256 of each file) and to verify + load it (`load_checkpoint` with identity check), the size of
each file, and the fp32 size of one full model copy for comparison.

Usage:
    python benchmarks/bench_checkpoint.py list
    python benchmarks/bench_checkpoint.py run                       # every row (~3 min on 2 cores)
    python benchmarks/bench_checkpoint.py run --only 'smollm2:*'
    python benchmarks/bench_checkpoint.py run --smoke               # tiny random BERT, seconds; writes no record
Results: benchmarks/results/checkpoint-<UTC stamp>.json (+ .md).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import result_child, write_records  # noqa: E402
MODELS = {"minilm": "ner", "smollm2": "lm"}
MODES = ("full", "sparse", "lora")
HEADS = ("classifier", "score", "lm_head")


def rows() -> list[str]:
    return [f"{m}:{mode}" for m in MODELS for mode in MODES]


def build(name: str, smoke: bool):
    import torch

    from sparseft.load.model import load_model

    torch.manual_seed(0)
    if smoke:
        from transformers import BertConfig, BertForTokenClassification

        cfg = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, num_labels=5)
        return BertForTokenClassification(cfg), 200
    task = MODELS[name]
    model = load_model(name, task, labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"] if task == "ner" else None)
    return model, model.config.vocab_size


def set_mode_(model, mode: str):
    """Make `model` trainable as in `mode`; returns the model to train (peft wraps for LoRA)."""
    import torch

    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith(HEADS)]
    if mode == "full":
        return model
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=linears))
    from sparseft.sft.layer import sparsify_

    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    masks = {f"{n}.weight": torch.rand(model.get_submodule(n).weight.shape, generator=gen) < 0.01 for n in linears}
    sparsify_(model, masks)
    for n, p in model.named_parameters():
        if n.startswith(("classifier", "score")):
            p.requires_grad_(True)
    return model


def run_row(row: str, smoke: bool) -> dict:
    import torch

    from sparseft.train.checkpoint import checkpoint_dir, load_checkpoint, save_checkpoint, LoopState
    from sparseft.train.identity import build_identity
    from sparseft.train.schedules import linear_warmup_decay

    torch.set_num_threads(max(1, torch.get_num_threads()))
    name, mode = row.split(":")
    base, vocab = build(name, smoke)
    full_bytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    model = set_mode_(base, mode)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    scheduler = linear_warmup_decay(optimizer, 100, 10)
    ids = torch.randint(0, vocab, (2, 64))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    out.logits.float().pow(2).mean().backward()
    optimizer.step()
    scheduler.step()
    features = [{"input_ids": list(range(i, i + 64)), "labels": [0] * 64} for i in range(256)]

    t0 = time.perf_counter()
    identity = build_identity(model, features, {"lr": 1e-4}, None)
    identity_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        save_checkpoint(tmp, model, optimizer, scheduler, LoopState(step=1), {"lr": 1e-4}, identity)
        save_s = time.perf_counter() - t0
        files = {p.name: p.stat().st_size for p in checkpoint_dir(tmp).iterdir()}
        t0 = time.perf_counter()
        load_checkpoint(tmp, model, optimizer, scheduler, identity)
        load_s = time.perf_counter() - t0
    total = sum(files.values())
    return {"row": row, "model": name if not smoke else "tiny-bert", "mode": mode,
            "trainable_params": sum(p.numel() for p in trainable),
            "full_model_fp32_mb": full_bytes / 2**20, "checkpoint_mb": total / 2**20,
            "checkpoint_vs_one_model_copy": total / full_bytes,
            "files_mb": {k: v / 2**20 for k, v in sorted(files.items())},
            "identity_seconds": identity_s, "save_seconds": save_s, "verify_load_seconds": load_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def markdown(records: list[dict]) -> str:
    head = "| row | trainable | checkpoint MB | / model copy | identity s | save s | verify+load s |\n|---|---|---|---|---|---|---|\n"
    body = "".join(f"| {r['row']} | {r.get('trainable_params', '-')} | {r.get('checkpoint_mb', 0):.1f} | "
                   f"{r.get('checkpoint_vs_one_model_copy', 0):.3f} | {r.get('identity_seconds', 0):.2f} | "
                   f"{r.get('save_seconds', 0):.2f} | {r.get('verify_load_seconds', 0):.2f} |\n"
                   if "error" not in r else f"| {r['row']} | error: {r['error']} |||||\n" for r in records)
    return head + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["list", "run"])
    parser.add_argument("--only", nargs="*", help="row patterns (fnmatch), e.g. 'smollm2:*'")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny random BERT; plumbing only, no record")
    args = parser.parse_args(argv)
    selected = [r for r in rows() if not args.only or any(fnmatch.fnmatch(r, p) for p in args.only)]
    if args.command == "list":
        print("\n".join(selected))
        return 0 if selected else 2
    if args.one:
        print("RESULT " + json.dumps(run_row(args.one, args.smoke)))
        return 0
    from sparseft.utils.env import describe_environment

    env, records = describe_environment(), []
    for row in selected:
        flags = ["--smoke"] if args.smoke else []
        record = result_child(__file__, ["run", "--one", row, *flags], row,
                              command=f"python benchmarks/bench_checkpoint.py run --only {row}")
        records.append(record)
        print(json.dumps(record))
    if args.smoke:
        print(markdown(records))
        return 1 if any("error" in r for r in records) else 0
    path = write_records(RESULTS, "checkpoint", env, records, markdown(records))
    print(f"wrote {path.relative_to(ROOT)} and {path.with_suffix('.md').name}")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())

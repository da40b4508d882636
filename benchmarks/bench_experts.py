"""MoEfication benchmarks: MiniLM on CoNLL-2003 dev, SmolLM2-135M perplexity on WikiText-2.

    python benchmarks/bench_experts.py                       # both parts (about 10-20 min on 2 cores)
    python benchmarks/bench_experts.py --only minilm --experts 16
    python benchmarks/bench_experts.py --smoke               # tiny random models, a few examples, < 60 s

Parts (in this process: the FFN blocks are timed with forward hooks during the evaluation pass):

  minilm   the full-fine-tuning baseline MiniLM (`benchmarks/runs/conll2003_full/model`: run
           `python benchmarks/run.py conll2003_full` first) split into E = 16 / 32 experts per FFN
           (balanced k-means on the weights), an MLP router per block trained on the dense
           activations of the first 128 training sentences; for 10 / 25 / 50% of the experts
           active per token (k = round(share * E)): dev F1 with the oracle router (real activation
           mass: the best a router can do; it computes the whole up-projection, so it is no faster)
           and with the trained router; dev pass wall time and the FFN blocks' time vs the dense
           model's, the experts' share of the dense FFN FLOPs, router recall of the oracle's top-k.
  smollm2  SmolLM2-135M (SwiGLU, far less activation-sparse than ReLU/GELU FFNs), E = 16,
           25 / 50% active: WikiText-2 perplexity (512-token windows, first 48 of the last 10%;
           router trained on 64 windows of the rest) with the oracle and the trained router.

Recovery (minilm, `--recovery-steps`, default 300 optimizer steps of batch 32 = 0.68 epoch of
CoNLL-2003 train; 0 skips it): for every (E, k) with the trained router, a copy of the MoEfied
model is fine-tuned - experts, attention, embeddings, head; the router fixed (hard top-k gives it
no gradient) - with distillation from the dense model (T = 2, alpha = 0.5, lr = the `recovery`
default 1e-4), then scored again (rows `E*_k*_mlp_recovered`, with the training time).

One JSON record per part goes to benchmarks/results/experts_<part>-<UTC stamp>.json
(`--smoke`: under benchmarks/runs/experts_quick/results).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import CONLL_DEV, CONLL_TRAIN, WIKI, prepare, write_json  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"
PARTS = ("minilm", "smollm2")
TEACHER = "benchmarks/runs/conll2003_full/model"
SHARES = {"minilm": (0.10, 0.25, 0.50), "smollm2": (0.25, 0.50)}


class FFNTimer:
    """Wall time spent inside the given modules (forward pre/post hooks), summed over calls."""

    def __init__(self, model, fqns: list[str]) -> None:
        self.seconds, self._t0, self._hooks = 0.0, {}, []
        for fqn in fqns:
            mod = model.get_submodule(fqn)
            self._hooks.append(mod.register_forward_pre_hook(lambda m, a, f=fqn: self._t0.__setitem__(f, time.perf_counter())))
            self._hooks.append(mod.register_forward_hook(lambda m, a, o, f=fqn: self._stop(f)))

    def _stop(self, fqn: str) -> None:
        self.seconds += time.perf_counter() - self._t0.pop(fqn)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def ffn_modules(model) -> list[str]:
    """The modules that make up the FFN blocks (dense: up + down projections; MoE: the ExpertFFN)."""
    from sparseft.experts import expert_layers
    from sparseft.experts.sites import find_sites

    layers = [n for n, _ in expert_layers(model)]
    if layers:
        return layers
    out = []
    for site in find_sites(model, ["re:."], []):
        out += [site.fqn, site.out_fqn] if site.out_fqn else [site.fqn]
    return out


def score(model, data, pad_id: int, batch_size: int) -> dict:
    """Task metrics of one dev pass, its wall time, the FFN blocks' time and the expert counters."""
    from sparseft.eval.evaluate import evaluate
    from sparseft.experts import expert_counters, reset_expert_counters

    reset_expert_counters(model)
    timer = FFNTimer(model, ffn_modules(model))
    try:
        t0 = time.perf_counter()
        metrics = evaluate(model, data, pad_id=pad_id, batch_size=batch_size)
        wall = time.perf_counter() - t0
    finally:
        timer.close()
    out = {k: metrics[k] for k in ("f1", "perplexity", "loss") if k in metrics}
    out.update(model_seconds=wall, ffn_seconds=timer.seconds)
    counts = expert_counters(model)
    if counts["dense_flops"]:
        out["active_flops_share"] = counts["expert_flops"] / counts["dense_flops"]
        out["router_flops_share"] = counts["router_flops"] / counts["dense_flops"]
    return out


def run_part(part: str, args) -> Path | None:
    import torch

    import sparseft
    from sparseft.compress.calibration import calibration_batches
    from sparseft.experts import MoEfyConfig, moefy_, set_routing_
    from sparseft.load.data import DataConfig, build_task_data
    from sparseft.load.model import load_tokenizer
    from sparseft.utils.env import describe_environment
    from sparseft.utils.hardware import detect

    model_path, data_cfg, calib_n = source(part, args)
    if not args.smoke and not Path(model_path).exists() and part == "minilm":
        print(f"skip {part}: missing {model_path} (python benchmarks/run.py conll2003_full)")
        return None
    t_start = time.perf_counter()
    torch.manual_seed(0)
    task = "ner" if part == "minilm" else "lm"
    dense = sparseft.load(model_path, task=task).eval()
    tok = load_tokenizer(model_path)
    pad_id = tok.pad_token_id or 0
    labels = [dense.config.id2label[i] for i in sorted(dense.config.id2label)] if task == "ner" else None
    data = build_task_data(DataConfig.from_dict(data_cfg), tok, labels)
    calib = calibration_batches(data.train, pad_id, calib_n, 8 if task == "ner" else 4)
    bs = 64 if task == "ner" else 4
    warm = dataclasses.replace(data, eval=data.eval[:8], eval_records=data.eval_records[:8])
    score(dense, warm, pad_id, bs)                  # warm-up: first-call costs stay out of the timings
    rows = [{"run": "dense", "experts": 0, "active_share": 1.0, **score(dense, data, pad_id, bs)}]
    print(f"[{part}] dense {rows[0]}", flush=True)
    experts = args.experts or ((16, 32) if part == "minilm" else (16,))
    if args.smoke:
        experts = (4, 8)
    for e in experts:
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        summary = moefy_(model, MoEfyConfig(num_experts=e, top_k=max(1, e // 4), router="mlp",
                                            router_steps=20 if args.smoke else args.router_steps,
                                            kmeans_iters=3 if args.smoke else 20,
                                            calib_tokens=2048 if args.smoke else 16384), batches=calib)
        moefy_seconds = time.perf_counter() - t0
        score(model, warm, pad_id, bs)
        for k in sorted({max(1, round(share * e)) for share in SHARES[part]}):
            for oracle in (True, False):
                set_routing_(model, top_k=k, oracle=oracle)
                row = {"run": f"E{e}_k{k}_{'oracle' if oracle else 'mlp'}", "experts": e, "top_k": k,
                       "active_share": k / e, "router": "oracle" if oracle else "mlp",
                       "moefy_seconds": moefy_seconds, **score(model, data, pad_id, bs)}
                if not oracle:
                    row["router_loss_before"] = summary["router"]["loss_before"]
                    row["router_loss_after"] = summary["router"]["loss_after"]
                rows.append(versus_dense(row, rows[0]))
                print(f"[{part}] {row}", flush=True)
            if part == "minilm" and args.recovery_steps > 0:
                rows.append(recovered_row(model, dense, data, pad_id, bs, rows[0], row, args))
                print(f"[{part}] {rows[-1]}", flush=True)
        del model
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    record = {"experiment": f"experts_{part}", "command": " ".join(["python", "benchmarks/bench_experts.py",
                                                                     *sys.argv[1:]]),
              "model": model_path, "data": data_cfg, "calib_examples": calib_n, "quick": bool(args.smoke),
              "env": describe_environment(), "hardware": detect().to_dict(),
              "torch_threads": torch.get_num_threads(), "wall_seconds": time.perf_counter() - t_start,
              "rows": rows,
              "notes": "oracle router = real activation mass (computes the full up-projection: quality upper bound, "
                       "no speed-up); ffn_seconds = time inside the FFN blocks during the dev pass (MoE: "
                       "ExpertFFN incl. routing; dense: intermediate + output.dense / mlp)."}
    folder = (ROOT / "benchmarks" / "runs" / "experts_quick" / "results") if args.smoke else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"experts_{part}-{stamp}.json"
    write_json(path, record)
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def versus_dense(row: dict, dense_row: dict) -> dict:
    """`row` plus its speed-ups (model, FFN) and metric deltas against the dense model's row."""
    for key in ("model_seconds", "ffn_seconds"):
        row[f"{key.split('_')[0]}_speedup"] = dense_row[key] / max(row[key], 1e-9)
    for key in ("f1", "perplexity"):
        if key in row:
            row[f"delta_{key}"] = row[key] - dense_row[key]
    return row


def recovered_row(model, dense, data, pad_id: int, bs: int, dense_row: dict, routed: dict, args) -> dict:
    """Score a copy of `model` (routing as set: the trained router, top-k of `routed`) after a short
    fine-tune with distillation from `dense`; the row beside `routed` (see the module docstring)."""
    import torch

    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import TrainConfig
    from sparseft.train.defaults import DEFAULT_LR
    from sparseft.train.distill import DistillConfig, make_distill_loss
    from sparseft.train.loop import train

    student = copy.deepcopy(model)
    teacher = copy.deepcopy(dense)
    for p in student.parameters():
        p.requires_grad_(True)
    steps = 3 if args.smoke else args.recovery_steps
    out = Path(args.tmp) / f"recover_{routed['run']}"
    cfg = TrainConfig(output_dir=str(out), epochs=1, max_steps=steps, batch_size=32, lr=DEFAULT_LR["recovery"],
                      eval_every="never", load_best_at_end=False, progress=False,
                      resume=False, seed=0)
    torch.manual_seed(0)
    result = train(student, data.train, cfg, collate_fn=PadCollator(pad_id),
                   loss_fn=make_distill_loss(teacher, DistillConfig(temperature=2.0, alpha=0.5)))
    student.eval()
    row = {**{k: routed[k] for k in ("experts", "top_k", "active_share", "router", "moefy_seconds")},
           "run": routed["run"] + "_recovered", "recovery_steps": result.steps,
           "recovery_examples": result.steps * cfg.batch_size, "recovery_seconds": result.train_seconds,
           "recovery_lr": cfg.lr, "distill": {"temperature": 2.0, "alpha": 0.5},
           **score(student, data, pad_id, bs)}
    del student, teacher
    return versus_dense(row, dense_row)


def source(part: str, args) -> tuple[str, dict, int]:
    """(model path, DataConfig fields, calibration examples) of a part; tiny random models with --smoke."""
    if part == "minilm":
        data = {"task": "ner", "train": CONLL_TRAIN, "eval": CONLL_DEV, "max_length": 128}
        if args.smoke:
            return tiny_model("minilm", args), {**data, "train_limit": 16, "eval_limit": 16}, 16
        return TEACHER, data, 128
    data = {"task": "lm", "train": WIKI, "eval_fraction": 0.1, "block_size": 512, "eval_limit": 48}
    if args.smoke:
        return tiny_model("smollm2", args), {**data, "block_size": 64, "eval_limit": 4, "train_limit": 8}, 8
    return "smollm2", {**data, "train_limit": 64}, 64


def tiny_model(alias: str, args) -> str:
    """A 2-layer, 32-wide random model with the alias's tokenizer (smoke tests only)."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, LlamaConfig, LlamaForCausalLM

    from sparseft.load.model import load_tokenizer

    tok = load_tokenizer(alias)
    path = Path(args.tmp) / alias
    torch.manual_seed(0)
    if alias == "minilm":
        labels = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, id2label=dict(enumerate(labels)),
                         label2id={l: i for i, l in enumerate(labels)})
        model = BertForTokenClassification(cfg)
    else:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts (default: both)")
    p.add_argument("--experts", type=int, nargs="+", help="experts per FFN (default: 16 32 / 16)")
    p.add_argument("--router-steps", type=int, default=500, help="MLP router training steps per block")
    p.add_argument("--recovery-steps", type=int, default=300,
                   help="minilm: distillation fine-tune steps (batch 32) after MoEfication, per (E, k); 0: none")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random models, a few examples; results under benchmarks/runs/experts_quick")
    args = p.parse_args()
    prepare(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        for part in args.only or PARTS:
            run_part(part, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

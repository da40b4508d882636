"""Sparse attention (issue 10): the blocked kernel vs dense SDPA, long-context LM, fine-tuning.

    python benchmarks/bench_attention.py --only kernel             # ~15 min on 2 idle cores (L up to 16k)
    python benchmarks/bench_attention.py --only lm                 # ~15 min (--max-windows 2, 1 eval window each)
    python benchmarks/bench_attention.py --only finetune           # CoNLL sqrt-window run (~35 min) + SmolLM2 (~10 min)
    python benchmarks/bench_attention.py --smoke                   # tiny random models, < 1 min, not in results/

Parts (every row runs in its own process, so its peak memory is its own):

  kernel    one attention call, forward (no grad) and forward+backward, median time and peak RSS
            growth (+ what autograd saves), for dense SDPA and the blocked kernel with windows sqrt(L),
            128, 256, and sqrt with recompute=True (fwd+bwd: checkpointed chunks) (--flex:
            also compiled FlexAttention with the sqrt window, forward only), at
            L = --lengths, with SmolLM2 heads (9 query / 3 KV heads, dim 64, causal) and MiniLM
            heads (12 heads, dim 32, bidirectional); batch 1.
  lm        SmolLM2-135M perplexity on WikiText-2 validation (--lm-eval-windows windows of each
            context length in --contexts), dense vs window w + 4 sinks for the first
            --max-windows of --lm-windows; forward tokens/s and peak RSS; greedy decoding speed
            after an --decode-context prompt (dense cache vs the rolling windowed cache).
  finetune  MiniLM on CoNLL-2003: recipes/minilm_conll2003_full.yaml with a `sparse_attention`
            stage before training (--conll-attention specs; default window=sqrt, whose min_window 16
            leaves most CoNLL sentences, under ~30 tokens, nearly dense); the dense row is the existing conll2003_full
            baseline (the latest benchmarks/results/conll2003_full-*.json). SmolLM2 trained --train-steps
            AdamW steps on --train-len-token WikiText-2 train windows (wiki.valid.tokens when
            wiki.train.tokens is absent, as in ../shared/data today), window vs dense: loss after
            the same steps and tokens/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import median_seconds, prepare, write_json  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"
PARTS = ("kernel", "lm", "finetune")
SUBPARTS = ("conll", "lm_train")  # the two halves of finetune, runnable alone
SHAPES = {"smollm2": dict(heads=9, kv_heads=3, dim=64, causal=True),
          "minilm": dict(heads=12, kv_heads=12, dim=32, causal=False)}
WIKI_VALID = "../shared/data/wikitext2/wiki.valid.tokens"
WIKI_TRAIN = "../shared/data/wikitext2/wiki.train.tokens"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- kernel ---------------------------------------------------------------------------------------
def kernel_row(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from sparseft.attention.config import SparseAttentionConfig
    from sparseft.attention.kernel import blocked_attention, recomputed_blocked_attention

    shape, length, row, mode = spec["shape"], spec["length"], spec["row"], spec["mode"]
    s = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, s["heads"], length, s["dim"], generator=gen)
    k = torch.randn(1, s["kv_heads"], length, s["dim"], generator=gen)
    v = torch.randn(1, s["kv_heads"], length, s["dim"], generator=gen)
    scale = s["dim"] ** -0.5
    if row == "flex_sqrt":   # compiled FlexAttention (CPU: inference only, so fwd rows only)
        from sparseft.attention.flex import flex_sparse_attention

        cfg = SparseAttentionConfig(window="sqrt", min_window=1)
        window = cfg.window_for(length)

        def attn(q, k, v):
            return flex_sparse_attention(q, k, v, cfg, causal=s["causal"], scaling=scale)
    elif row == "dense_sdpa":
        def attn(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=s["causal"], scale=scale,
                                                  enable_gqa=s["heads"] != s["kv_heads"])
        window = length
    else:   # window_<sqrt|int>[_recompute]
        size = row.split("_")[1]
        cfg = SparseAttentionConfig(window=size if size == "sqrt" else int(size), min_window=1,
                                    recompute=row.endswith("_recompute"))
        window = cfg.window_for(length)
        kernel = recomputed_blocked_attention if cfg.recompute else blocked_attention

        def attn(q, k, v):
            return kernel(q, k, v, cfg, causal=s["causal"], scaling=scale)

    if mode == "fwd":
        def step():
            with torch.no_grad():
                attn(q, k, v)
    else:
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

        def step():
            attn(qg, kg, vg).sum().backward()
    base = rss_mb()
    seconds = median_seconds(step, spec["repeats"], warmup=1)
    out = {"shape": shape, "length": length, "row": row, "mode": mode, "window": window, "seconds": seconds,
           "peak_mb_over_inputs": peak_rss_mb() - base}
    if mode == "fwd_bwd":   # what autograd keeps for the backward (deterministic, unlike RSS)
        out["saved_for_backward_mb"] = saved_mb(lambda: attn(qg, kg, vg))
    return out


def saved_mb(forward) -> float:
    """MiB of distinct tensor storage autograd saves for the backward of `forward()`."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(seen.values()) / 2**20


def kernel_rows(args) -> list[dict]:
    rows = ["dense_sdpa", "window_sqrt", "window_128", "window_256", "window_sqrt_recompute"]
    rows += ["flex_sqrt"] if args.flex else []
    specs = [{"part": "kernel", "shape": sh, "length": n, "row": r, "mode": m, "repeats": args.repeats,
              "smoke": args.smoke}
             for sh in args.shapes for n in args.lengths for m in ("fwd", "fwd_bwd") for r in rows
             if not (r.split("_")[1].isdigit() and int(r.split("_")[1]) >= n)
             and not (r == "flex_sqrt" and m == "fwd_bwd") and not (r.endswith("_recompute") and m == "fwd")]
    out = [run_child(spec) for spec in specs]
    dense = {(r["shape"], r["length"], r["mode"]): r for r in out if r.get("row") == "dense_sdpa" and "seconds" in r}
    for r in out:
        d = dense.get((r.get("shape"), r.get("length"), r.get("mode")))
        if d and "seconds" in r and r["row"] != "dense_sdpa":
            r["speedup_vs_sdpa"] = d["seconds"] / r["seconds"]
            r["memory_vs_sdpa"] = d["peak_mb_over_inputs"] / max(r["peak_mb_over_inputs"], 1e-3)
            if "saved_for_backward_mb" in r:
                r["saved_vs_sdpa"] = d["saved_for_backward_mb"] / max(r["saved_for_backward_mb"], 1e-6)
    return out


# ---- lm -------------------------------------------------------------------------------------------
def _load_lm(spec: dict):
    import torch

    from sparseft.attention.apply import sparsify_attention_
    from sparseft.attention.config import SparseAttentionConfig

    if spec.get("smoke"):
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                             num_key_value_heads=1, intermediate_size=64,
                                             max_position_embeddings=4096)).eval()
    else:
        from sparseft.load.model import load_model

        model = load_model(spec["model"], "lm").eval()
    if spec["row"] != "dense":
        sparsify_attention_(model, SparseAttentionConfig(window=int(spec["row"].split("_")[1]), sinks=4))
    return model


def _wiki_ids(spec: dict, path: str):
    import torch

    if spec.get("smoke"):
        n = 4 * spec.get("context", 0) + spec.get("train_len", 0) * spec.get("steps", 0)
        return torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(0))
    from sparseft.load.model import load_tokenizer

    tok = load_tokenizer(spec["model"])
    text = (ROOT / path).read_text()[: spec.get("chars", 2_000_000)]
    return torch.tensor(tok(text)["input_ids"])


def lm_row(spec: dict) -> dict:
    import torch

    model = _load_lm(spec)
    ids = _wiki_ids(spec, WIKI_VALID)
    ctx = spec["context"]
    n = min(spec["eval_windows"], len(ids) // ctx)
    nll, count, seconds = 0.0, 0, 0.0
    base = rss_mb()
    with torch.no_grad():
        for w in range(n):
            x = ids[w * ctx:(w + 1) * ctx].unsqueeze(0)
            t0 = time.perf_counter()
            out = model(x, labels=x)
            seconds += time.perf_counter() - t0
            nll += out.loss.item() * (ctx - 1)
            count += ctx - 1
    return {"context": ctx, "row": spec["row"], "windows": n, "perplexity": math.exp(nll / count),
            "tokens_s": n * ctx / seconds, "peak_mb": peak_rss_mb() - base}


def decode_row(spec: dict) -> dict:
    import torch

    model = _load_lm(spec)
    ids = _wiki_ids(spec, WIKI_VALID)[: spec["context"]].unsqueeze(0)
    from transformers import DynamicCache

    from sparseft.attention.cache import windowed_cache

    cache = (DynamicCache() if spec["row"] == "dense"
             else windowed_cache(model, max_length=spec["context"] + spec["new_tokens"]))
    base = rss_mb()
    with torch.no_grad():
        t0 = time.perf_counter()
        token = model(ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)   # the cache fills in place
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(spec["new_tokens"]):
            token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        decode = time.perf_counter() - t0
    return {"context": spec["context"], "row": spec["row"], "kind": "decode", "prefill_s": prefill,
            "decode_tokens_s": spec["new_tokens"] / decode, "peak_mb": peak_rss_mb() - base}


def _missing(args, *paths: str) -> list[dict]:
    gone = [p for p in paths if not args.smoke and not (ROOT / p).exists()]
    return [{"skipped": f"missing {p}"} for p in gone]


def lm_rows(args) -> list[dict]:
    if _missing(args, WIKI_VALID):
        return _missing(args, WIKI_VALID)
    rows = ["dense"] + [f"window_{w}" for w in args.lm_windows[: args.max_windows]]
    common = {"model": args.lm_model, "smoke": args.smoke, "eval_windows": args.lm_eval_windows}
    out = [run_child({"part": "lm", "context": c, "row": r, **common}) for c in args.contexts for r in rows]
    dense = {r["context"]: r for r in out if r.get("row") == "dense" and "perplexity" in r}
    for r in out:
        if r.get("context") in dense and "perplexity" in r:
            r["ppl_vs_dense"] = r["perplexity"] / dense[r["context"]]["perplexity"]
    for r in rows[:2]:
        out.append(run_child({"part": "decode", "context": args.decode_context, "row": r,
                              "new_tokens": args.new_tokens, **common}))
    return out


# ---- finetune -------------------------------------------------------------------------------------
def lm_train_row(spec: dict) -> dict:
    import torch

    model = _load_lm(spec)
    model.train()
    source = WIKI_TRAIN if (ROOT / WIKI_TRAIN).exists() else WIKI_VALID   # wiki.train.tokens is not shipped here
    ids = _wiki_ids(spec, source)
    n = spec["train_len"]
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"])
    losses, seconds = [], 0.0
    for step in range(spec["steps"]):
        x = ids[step * n:(step + 1) * n].unsqueeze(0)
        t0 = time.perf_counter()
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - t0
        losses.append(loss.item())
    return {"kind": "lm_train", "row": spec["row"], "data": source, "train_len": n, "steps": spec["steps"],
            "final_loss": losses[-1],
            "mean_last3_loss": statistics.mean(losses[-3:]), "losses": losses, "tokens_s": spec["steps"] * n / seconds,
            "peak_mb": peak_rss_mb()}


def conll_rows(args) -> list[dict]:
    """The CoNLL recipe with a sparse_attention stage before training (one run per --conll-attention
    spec), and the dense baseline's metrics."""
    from sparseft.cli.attention_args import parse_attention
    from sparseft.config.recipe import Stage, load_recipe
    from sparseft.pipeline import run

    out, dense = [], None
    records = sorted(RESULTS.glob("conll2003_full-*.json"))       # benchmarks/run.py conll2003_full records
    if records:
        stages = json.loads(records[-1].read_text())["stages"]
        dense = stages.get("dev", {}).get("f1")
        out.append({"kind": "conll", "row": "dense (conll2003_full baseline)", "record": records[-1].name, "f1": dense})
    for i, spec in enumerate(args.conll_attention):
        recipe = load_recipe(ROOT / "recipes" / "minilm_conll2003_full.yaml",
                             [f"output_dir=benchmarks/runs/conll2003_sparse_attention_{i}"])
        recipe.stages.insert(0, Stage(name="attention", method="sparse_attention", params=parse_attention(spec)))
        t0 = time.perf_counter()
        ctx = run(recipe, print_report=False, overwrite=True)
        f1 = ctx.state.get("dev", {}).get("f1")
        out.append({"kind": "conll", "row": spec, "f1": f1, "seconds": time.perf_counter() - t0,
                    **({"delta_f1": f1 - dense} if f1 is not None and dense is not None else {})})
    return out


def conll_part_rows(args) -> list[dict]:
    return [] if args.smoke else (_missing(args, "../shared/data/conll2003/eng.train") or conll_rows(args))


def finetune_rows(args) -> list[dict]:
    return conll_part_rows(args) + lm_train_rows(args)


def lm_train_rows(args) -> list[dict]:
    out: list[dict] = []
    if _missing(args, WIKI_VALID):
        return out + _missing(args, WIKI_VALID)
    common = {"part": "lm_train", "model": args.lm_model, "smoke": args.smoke, "train_len": args.train_len,
              "steps": args.train_steps, "lr": 1e-4}
    out += [run_child({**common, "row": r}) for r in ("dense", f"window_{args.train_window}")]
    return out


# ---- driver ---------------------------------------------------------------------------------------
CHILDREN = {"kernel": kernel_row, "lm": lm_row, "decode": decode_row, "lm_train": lm_train_row}


def run_child(spec: dict) -> dict:
    print(f"  {spec}", flush=True)
    if spec.get("smoke"):   # smoke: in this process (imports dominate tiny rows); memory figures mean little
        return CHILDREN[spec["part"]](spec)
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, __file__, "--child", str(spec_file), str(out_file)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out_file.exists():
            return {**spec, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        return json.loads(out_file.read_text())


def child(spec_file: str, out_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    import torch

    torch.manual_seed(0)
    Path(out_file).write_text(json.dumps(CHILDREN[spec["part"]](spec)))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=PARTS + SUBPARTS,
                   help="run only these parts (default: all; conll / lm_train: one half of finetune)")
    p.add_argument("--smoke", action="store_true", help="tiny random models and lengths; record under benchmarks/runs/")
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096, 8192, 16384],
                   help="kernel part sequence lengths")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES), help="kernel head shapes")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per kernel row (median)")
    p.add_argument("--flex", action="store_true", help="kernel part: also compiled FlexAttention, sqrt window, "
                                                       "forward only (compiles a C++ kernel per shape: minutes)")
    p.add_argument("--lm-model", default="smollm2", help="decoder for the lm and finetune parts")
    p.add_argument("--contexts", nargs="+", type=int, default=[2048, 4096, 8192], help="lm part context lengths")
    p.add_argument("--lm-windows", nargs="+", type=int, default=[256, 512, 1024], help="lm part windows (+4 sinks)")
    p.add_argument("--max-windows", type=int, default=2, help="use only the first N of --lm-windows (time budget)")
    p.add_argument("--lm-eval-windows", type=int, default=1, help="WikiText-2 windows per context length")
    p.add_argument("--decode-context", type=int, default=8192, help="prompt length for the decoding rows")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated in the decoding rows")
    p.add_argument("--conll-attention", nargs="+", default=["window=sqrt"], metavar="SPEC",
                   help="finetune part: one CoNLL run per --attention spec (~32 min each), e.g. window=sqrt "
                        "window=sqrt,min_window=4,global_tokens=1")
    p.add_argument("--train-len", type=int, default=4096, help="tokens per SmolLM2 training window")
    p.add_argument("--train-steps", type=int, default=6, help="SmolLM2 AdamW steps per row")
    p.add_argument("--train-window", type=int, default=256, help="window (+4 sinks) of the SmolLM2 sparse row")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    prepare(ROOT)
    if args.child:
        return child(*args.child)
    if args.smoke:
        args.lengths, args.repeats, args.contexts, args.lm_windows = [256], 1, [256], [32]
        args.decode_context, args.new_tokens, args.train_len, args.train_steps, args.train_window = 256, 4, 256, 3, 32
    from sparseft.utils.env import describe_environment
    from sparseft.utils.hardware import detect

    failed = 0
    for part in args.only or PARTS:
        print(f"[{part}]", flush=True)
        t0 = time.perf_counter()
        rows = {"kernel": kernel_rows, "lm": lm_rows, "finetune": finetune_rows, "conll": conll_part_rows,
                "lm_train": lm_train_rows}[part](args)
        record = {"experiment": f"attention_{part}", "command": " ".join(["python", "benchmarks/bench_attention.py",
                                                                           *sys.argv[1:]]),
                  "description": f"sparse attention (issue 10), part {part}; CPU units: {detect().summary()}",
                  "smoke": args.smoke, "env": describe_environment(), "hardware": detect().to_dict(),
                  "wall_seconds": time.perf_counter() - t0, "rows": rows}
        folder = (ROOT / "benchmarks" / "runs" / "attention_smoke" / "results") if args.smoke else RESULTS
        folder.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        path = folder / f"attention_{part}-{stamp}.json"
        write_json(path, record)
        print(f"wrote {path.relative_to(ROOT)}")
        for r in rows:
            failed += "error" in r
            print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                                   if k not in ("losses", "part", "repeats", "smoke", "model")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""GGUF export benchmark: SmolLM2-135M leaves sparseft as GGUF and runs in llama.cpp.

    python benchmarks/bench_gguf.py              # every row (~15 min on 2 cores)
    python benchmarks/bench_gguf.py --rows torch_fp32 llamacpp_q8_0
    python benchmarks/bench_gguf.py --quick      # smoke test: 2 windows, 8 new tokens; not in results/

Rows (each in its own process, so peak memory is its own):
  torch_fp32, torch_dyn_int8   our own paths (transformers model in torch; dynamic int8 = quantize_)
  llamacpp_f16 / _q8_0 / _q4_0  `sparseft.export.gguf.export_gguf` of the same model, tokenizer
                                copied from the bundled GGUF, run by llama.cpp (llama-cpp-python,
                                optional: `pip install llama-cpp-python`, built from source)
  hf_gguf_f16                  the F16 file read back by transformers' GGUF loader: max |logit|
                                difference against torch_fp32 on the first eval window

Protocol (stated in every record): WikiText-2 = bench_prune.py's windows: 512-token windows of
wiki.valid.tokens, eval = the first 48 windows of the file's last 10%, tokenized by our HF
tokenizer; perplexity = exp(mean NLL of tokens 2..512 of every window), the same sum for every row
(llama.cpp rows feed the same token ids and read every position's logits). Decoding: batch 1,
greedy, a 64-token prompt (the first eval window's first 64 tokens), 128 new tokens, tokens/s of
the generation alone (prompt processing timed separately); median of --repeats runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import WIKI, median_seconds, write_json  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"
ROWS = ("torch_fp32", "torch_dyn_int8", "hf_gguf_f16", "llamacpp_f16", "llamacpp_q8_0", "llamacpp_q4_0")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def windows(args):
    from sparseft.load.data import DataConfig, build_task_data
    from sparseft.load.model import load_tokenizer

    tok = load_tokenizer("smollm2")
    cfg = DataConfig(task="lm", train=args.wiki, block_size=args.window_len, eval_fraction=0.1,
                     eval_limit=args.windows, train_limit=1)
    return tok, [list(map(int, f["input_ids"])) for f in build_task_data(cfg, tok).eval]


def _nll(logits, ids) -> tuple[float, int]:
    """Sum of -log p(ids[t+1] | ids[..t]) over a window; logits [T, V] (torch or numpy)."""
    import torch

    logits = torch.as_tensor(logits, dtype=torch.float32)
    target = torch.tensor(ids[1:])
    return float(torch.nn.functional.cross_entropy(logits[:-1], target, reduction="sum")), len(ids) - 1


def export_file(qtype: str, folder: Path) -> Path:
    from sparseft.export.gguf import export_gguf
    from sparseft.load.model import load_model, resolve_model

    src = resolve_model("smollm2")
    model = load_model("smollm2", "lm").eval()
    path = folder / f"smollm2-{qtype}.gguf"
    export_gguf(model, path, tokenizer_gguf=Path(src.path) / src.gguf_file, qtype=qtype, name="SmolLM2-135M-Instruct")
    return path


def torch_row(row: str, args) -> dict:
    import torch

    from sparseft.compress.quantize import DynamicInt8Config, quantize_
    from sparseft.load.model import load_model

    tok, wins = windows(args)
    model = load_model("smollm2", "lm").eval()
    if row == "torch_dyn_int8":
        quantize_(model, DynamicInt8Config())
    total, n = 0.0, 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids in wins:
            s, k = _nll(model(input_ids=torch.tensor([ids])).logits[0], ids)
            total, n = total + s, n + k
    out = {"row": row, "perplexity": math.exp(total / n), "eval_tokens": n, "eval_seconds": time.perf_counter() - t0}
    prompt = torch.tensor([wins[0][:args.prompt_len]])
    with torch.inference_mode():
        gen = lambda: model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,  # noqa: E731
                                     do_sample=False, pad_token_id=tok.pad_token_id)
        gen()  # warm-up
        total_s = median_seconds(gen, args.repeats)
        prefill_s = median_seconds(lambda: model(input_ids=prompt), args.repeats)
    out.update(decode_tokens_per_s=args.new_tokens / max(1e-9, total_s - prefill_s),
               prefill_tokens_per_s=args.prompt_len / prefill_s, threads=torch.get_num_threads())
    if row == "torch_fp32":
        out.update(size_bytes=4 * sum(p.numel() for p in model.parameters()), size_kind="4 bytes x parameters")
    return out


def hf_gguf_row(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from sparseft.load.model import load_model

    _, wins = windows(args)
    ids = torch.tensor([wins[0]])
    ref = load_model("smollm2", "lm").eval()
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        path = export_file("f16", Path(tmp))
        back = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=path.name, dtype=torch.float32).eval()
        a, b = ref(input_ids=ids).logits.float(), back(input_ids=ids).logits.float()
    return {"row": "hf_gguf_f16", "max_abs_logit_diff_vs_fp32": float((a - b).abs().max()),
            "argmax_agreement_vs_fp32": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "logit_scale": float(a.abs().max())}


def llamacpp_row(row: str, args) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"row": row, "skipped": "llama-cpp-python is not installed (pip install llama-cpp-python)"}
    import numpy as np

    qtype = row.split("_", 1)[1]
    _, wins = windows(args)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_file(qtype, Path(tmp))
        size = path.stat().st_size
        llm = Llama(model_path=str(path), n_ctx=max(args.window_len, args.prompt_len + args.new_tokens) + 8,
                    n_batch=args.window_len, logits_all=True, n_threads=args.threads, verbose=False)
        total, n = 0.0, 0
        t0 = time.perf_counter()
        for ids in wins:
            llm.reset()
            llm.eval(ids)
            s, k = _nll(np.asarray(llm.scores[: len(ids)]), ids)
            total, n = total + s, n + k
        out = {"row": row, "perplexity": math.exp(total / n), "eval_tokens": n,
               "eval_seconds": time.perf_counter() - t0, "size_bytes": size, "size_kind": "GGUF file"}
        prompt = wins[0][:args.prompt_len]

        def prefill():
            llm.reset()
            llm.eval(prompt)

        def generate():
            llm.reset()
            made = 0
            for _tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                made += 1
                if made >= args.new_tokens:
                    break

        generate()  # warm-up
        total_s = median_seconds(generate, args.repeats)
        prefill_s = median_seconds(prefill, args.repeats)
        out.update(decode_tokens_per_s=args.new_tokens / max(1e-9, total_s - prefill_s),
                   prefill_tokens_per_s=args.prompt_len / prefill_s, threads=args.threads)
    return out


def child(row: str, spec_file: str, out_file: str) -> int:
    args = argparse.Namespace(**json.loads(Path(spec_file).read_text()))
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if row.startswith("torch_"):
        result = torch_row(row, args)
    elif row == "hf_gguf_f16":
        result = hf_gguf_row(args)
    else:
        result = llamacpp_row(row, args)
    result.update(wall_seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
    Path(out_file).write_text(json.dumps(result, default=str))
    return 0


def run_row(row: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps(vars(args)))
        rc = subprocess.call([sys.executable, __file__, "--child", row, str(spec), str(out)], cwd=ROOT)
        if rc != 0 or not out.exists():
            return {"row": row, "error": f"exit code {rc}"}
        return json.loads(out.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=ROWS, help="rows to run (default: all)")
    p.add_argument("--wiki", default=WIKI)
    p.add_argument("--windows", type=int, default=48)
    p.add_argument("--window-len", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="2 windows, 8 new tokens, 1 repeat; not in results/")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child)
    if args.quick:
        args.windows, args.new_tokens, args.repeats = 2, 8, 1
    if not (ROOT / args.wiki).exists():
        print(f"skip: missing {args.wiki}")
        return 0
    from sparseft.utils.env import describe_environment

    t0 = time.perf_counter()
    rows = []
    for row in args.rows or ROWS:
        print(f"[gguf] {row}", flush=True)
        rows.append(run_row(row, args))
    base = next((r for r in rows if r.get("row") == "torch_fp32" and "perplexity" in r), None)
    for r in rows:
        if base and "perplexity" in r:
            r["ppl_ratio_vs_fp32"] = r["perplexity"] / base["perplexity"]
        if base and "decode_tokens_per_s" in r:
            r["decode_speedup_vs_fp32"] = r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    record = {"experiment": "gguf_smollm2", "command": " ".join(["python", "benchmarks/bench_gguf.py", *sys.argv[1:]]),
              "data": (f"WikiText-2 {args.window_len}-token windows of wiki.valid.tokens, eval = first {args.windows} "
                       f"windows of the last 10%; decoding: batch 1, greedy, {args.prompt_len}-token prompt, "
                       f"{args.new_tokens} new tokens, median of {args.repeats}, {args.threads} threads"),
              "quick": args.quick, "env": describe_environment(), "wall_seconds": time.perf_counter() - t0,
              "rows": rows}
    folder = (ROOT / "benchmarks" / "runs" / "gguf_quick") if args.quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"gguf_smollm2-{stamp}.json"
    write_json(path, record)
    print(f"wrote {path.relative_to(ROOT)}")
    for r in rows:
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

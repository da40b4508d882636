"""Quantization benchmarks: int8 kernels on MiniLM-sized Linear layers, MiniLM on CoNLL-2003 dev,
SmolLM2-135M perplexity on WikiText-2.

    python benchmarks/bench_quant.py                        # every part, in order (~45 min on 2 cores)
    python benchmarks/bench_quant.py --only linear minilm   # some parts
    python benchmarks/bench_quant.py --only minilm --rows fp32 dyn_int8 torch_qdynamic
    python benchmarks/bench_quant.py --quick                # smoke test: tiny limits, results not in results/

Parts (minilm and smollm2 rows each run in their own process, so their peak memory is their own):

  linear   microbenchmark of dynamic-int8 kernels on MiniLM's Linear shapes (384->1536, 1536->384,
           384->384) at 64 tokens (batch 1 x 64) and 2,048 tokens (batch 32 x 64): fp32, ours
           (oneDNN qlinear, torch._int_mm), weight-only `_weight_int8pack_mm`, torch.ao
           quantize_dynamic (fbgemm, deprecated) and torchao
           Int8DynamicActivationInt8WeightConfig (if installed: pip install -e .[quant]).
  minilm   the fine-tuned MiniLM (--model-dir, default: the lead's conll2003_full baseline) on CoNLL
           dev: F1, size on disk, CPU latency (batch 1) and throughput (batch 32) at seq_len 64 for
           fp32, dynamic int8 (ours: oneDNN default, int_mm, opt-in fbgemm; torch.ao reference;
           torchao), int4 RTN, k-means-16, NF4 weight-only,
           50% sparse + int8 and structured-pruned + int8 (both also int8 embeddings).
  smollm2  SmolLM2-135M perplexity on WikiText-2 for fp32, dynamic int8, int8 RTN, int4 RTN, int4 GPTQ
           (same grid as int4 RTN; gptq_int4_seq: with GPTQConfig.sequential) and NF4.

Data (stated in every record): CoNLL dev = eng.testa, all 3,250 sentences (`--eval-limit N`: the
first N); k-means calibration = the first 128 sentences of eng.train. WikiText-2 = the protocol of
bench_prune.py: 512-token windows of wiki.valid.tokens, eval = the first 48 windows of the file's
last 10%, GPTQ calibration = the first 32 windows of the other 90% (disjoint text).
Sizes: fp32 = the save_pretrained safetensors file; ours = the compressed checkpoint
(export/compressed.py, weights file only); torch / torchao = torch.save(state_dict).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import add_model_eval_args, add_timing_args, prepare, run_parts, write_json  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"
PARTS = ("linear", "minilm", "smollm2")
MINILM_ROWS = ("fp32", "dyn_int8", "dyn_int8_int_mm", "dyn_int8_fbgemm", "torch_qdynamic", "torchao_int8",
               "rtn_int4", "kmeans16", "nf4", "sparse50_int8", "structured_int8")
LM_ROWS = ("fp32", "dyn_int8", "rtn_int8", "rtn_int4", "gptq_int4", "gptq_int4_seq", "nf4")
STRUCTURED_DEFAULTS = ("benchmarks/runs/prune_full/conll_structured_ffn75_drop2/model",
                       "benchmarks/runs/prune/conll_structured_ffn75_drop2/model",
                       "benchmarks/runs/prune_full/conll_structured_ffn50_drop1/model",
                       "benchmarks/runs/prune/conll_structured_ffn50_drop1/model")


def data_note(args) -> str:
    dev = f"first {args.eval_limit} sentences" if args.eval_limit else "all 3,250 sentences"
    return (f"CoNLL-2003 dev = eng.testa, {dev}; k-means calibration = first {args.calib_samples} sentences of "
            f"eng.train. WikiText-2: {args.window_len}-token windows of wiki.valid.tokens, eval = first "
            f"{args.windows} windows of the last 10% of the file, GPTQ calibration = first {args.calib_windows} "
            f"windows of the other 90%. Timing: random token ids, seq_len {args.seq_len}, median of "
            f"{args.repeats} calls, {args.threads or 'default'} threads.")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- part: linear ------------------------------------------------------------------------------

def _time_us(fn, x, repeats: int) -> dict:
    import torch

    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return {"median_us": statistics.median(times) * 1e6, "min_us": min(times) * 1e6}


def linear_part(args) -> list[dict]:
    import copy

    import torch

    from sparseft.compress.quantize.dynamic import DynamicInt8Linear, onednn_available
    from sparseft.compress.quantize.pack import sqnr_db

    rows = []
    torch.manual_seed(0)
    shapes = [(384, 1536), (1536, 384), (384, 384)]
    for k, n in shapes[:1] if args.quick else shapes:
        lin = torch.nn.Linear(k, n)
        kernels = {"fp32": lin, "ours_int_mm": DynamicInt8Linear.from_linear(lin, "int_mm")}
        if onednn_available():
            kernels["ours_onednn"] = DynamicInt8Linear.from_linear(lin, "onednn")
        w8 = kernels["ours_int_mm"]  # weight-only int8 GEMM on the same codes, fp32 activations
        kernels["weight_int8pack_mm"] = lambda x, w8=w8: torch.ops.aten._weight_int8pack_mm(
            x, w8.weight_int8, w8.weight_scale) + w8.bias
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kernels["torch_qdynamic"] = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(copy.deepcopy(lin)), {torch.nn.Linear}, dtype=torch.qint8)
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig
            from torchao.quantization import quantize_ as ao_quantize_

            ao = torch.nn.Sequential(copy.deepcopy(lin))
            ao_quantize_(ao, Int8DynamicActivationInt8WeightConfig())
            kernels["torchao_int8"] = ao
        except ImportError:
            print("  torchao not installed (pip install -e .[quant]): no torchao rows")
        for tokens in (64, 2048):
            x = torch.randn(tokens, k)
            with torch.inference_mode():
                ref = lin(x)
            for name, fn in kernels.items():
                t = _time_us(fn, x, 3 if name == "weight_int8pack_mm" else args.repeats * 3)  # very slow
                with torch.inference_mode():
                    err = sqnr_db(ref, fn(x))
                rows.append({"shape": f"{k}->{n}", "tokens": tokens, "kernel": name, **t, "sqnr_db": err,
                             "threads": torch.get_num_threads()})
    fp32 = {(r["shape"], r["tokens"]): r["median_us"] for r in rows if r["kernel"] == "fp32"}
    for r in rows:
        r["speedup_vs_fp32"] = fp32[(r["shape"], r["tokens"])] / r["median_us"]
    return rows


# ---- part: minilm (one row per child process) ---------------------------------------------------

def _ner_setup(model_dir: str, args):
    from sparseft.load.data import DataConfig, build_eval_data
    from sparseft.load.model import load_model, load_tokenizer, model_labels

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, "ner").eval()
    labels = model_labels(model)
    cfg = DataConfig(task="ner", max_length=128, eval_limit=args.eval_limit)
    return model, tok, labels, build_eval_data(cfg, tok, labels, args.conll_dev)


def _calib(tok, labels, args) -> list[dict]:
    from sparseft.compress.calibration import calibration_batches
    from sparseft.load.data import DataConfig, build_eval_data

    cfg = DataConfig(task="ner", max_length=128, eval_limit=args.calib_samples)
    feats = build_eval_data(cfg, tok, labels, args.conll_train).eval
    return calibration_batches(feats, tok.pad_token_id or 0, args.calib_samples, 8)


def _f1(model, data, tok) -> float:
    from sparseft.eval.evaluate import evaluate

    return evaluate(model, data, pad_id=tok.pad_token_id or 0, batch_size=64)["f1"]


def _prune_or_skip(model, kind: str, args):
    """One-shot pruning through sparseft.compress.prune (another area); None if not importable."""
    try:
        from sparseft.compress.prune import MagnitudePruneConfig, StructuredPruneConfig, prune_
    except ImportError as exc:
        return f"sparseft.compress.prune is not importable ({exc})"
    if kind == "sparse":
        prune_(model, MagnitudePruneConfig(sparsity=0.5))
    else:
        prune_(model, StructuredPruneConfig(**json.loads(args.structured_args)))
    return None


def _torch_size(model) -> int:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "m.pt")
        return (Path(tmp) / "m.pt").stat().st_size


def minilm_row(row: str, args) -> dict:
    import torch

    from sparseft.compress.quantize import (DynamicInt8Config, KMeansConfig, NF4Config, RTNConfig,
                                            quantize_)
    from sparseft.compress.quantize.layers import default_ignore, target_linears
    from sparseft.eval.cost import count_parameters, size_on_disk, time_forward
    from sparseft.export.compressed import export_compressed

    source = args.model_dir
    out: dict = {"row": row}
    if row == "sparse50_int8" and args.sparse_model:
        source = args.sparse_model
    if row == "structured_int8":
        given = args.structured_model or next((p for p in STRUCTURED_DEFAULTS if (ROOT / p).exists()), "")
        source = given or source
    model, tok, labels, data = _ner_setup(source, args)
    out["source"] = source
    if row in ("sparse50_int8", "structured_int8") and source == args.model_dir:
        kind = "sparse" if row == "sparse50_int8" else "structured"
        skip = _prune_or_skip(model, kind, args)
        if skip:
            return {**out, "skipped": skip}
        out["source"] += (" + one-shot magnitude 50% (no recovery fine-tuning)" if kind == "sparse" else
                          f" + one-shot structured {args.structured_args} (no recovery fine-tuning)")
    if row in ("sparse50_int8", "structured_int8"):
        out["f1_source_fp32"] = _f1(model, data, tok)
        out["params"] = count_parameters(model)
    t0 = time.perf_counter()
    size_kind = "compressed"
    names = {fqn for fqn, _ in target_linears(model, ["Linear"], default_ignore())}
    if row in ("dyn_int8", "sparse50_int8", "structured_int8"):
        quantize_(model, DynamicInt8Config())
        if row != "dyn_int8" and args.embed_bits:
            quantize_(model, RTNConfig(bits=args.embed_bits, targets=["Embedding"], ignore=[]))
            out["notes"] = f"word/position embeddings int{args.embed_bits} RTN per row"
    elif row in ("dyn_int8_int_mm", "dyn_int8_fbgemm"):
        quantize_(model, DynamicInt8Config(backend=row.removeprefix("dyn_int8_")))
    elif row == "torch_qdynamic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(model, names, dtype=torch.qint8)
        size_kind = "torch.save"
    elif row == "torchao_int8":
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig
            from torchao.quantization import quantize_ as ao_quantize_
        except ImportError:
            return {**out, "skipped": "torchao not installed (pip install -e .[quant])"}
        ao_quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in names)
        size_kind = "torch.save"
    elif row == "rtn_int4":
        quantize_(model, RTNConfig(bits=4, granularity="group", group_size=args.group_size))
    elif row == "kmeans16":
        kcfg = KMeansConfig(**json.loads(args.kmeans_args))
        quantize_(model, kcfg, batches=_calib(tok, labels, args) if kcfg.needs_batches() else None)
        out["kmeans"] = kcfg.to_dict()["_data"]
    elif row == "nf4":
        quantize_(model, NF4Config(block_size=64))
    elif row != "fp32":
        raise ValueError(f"unknown minilm row {row!r}; rows: {MINILM_ROWS}")
    out["quantize_seconds"] = time.perf_counter() - t0
    out["f1"] = _f1(model, data, tok)
    if row == "fp32":
        out["size_bytes"], size_kind = size_on_disk(model), "save_pretrained"
    elif size_kind == "torch.save":
        out["size_bytes"] = _torch_size(model)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            stats = export_compressed(model, tmp)
        out.update(size_bytes=stats["weights_bytes"], global_sparsity=stats["global_sparsity"])
    out["size_kind"] = size_kind
    out["latency_ms_b1"] = 1000 * time_forward(model, batch=1, seq_len=args.seq_len, repeats=args.repeats)
    thr = time_forward(model, batch=32, seq_len=args.seq_len, repeats=max(3, args.repeats // 2))
    out.update(throughput_seq_s_b32=32 / thr, threads=torch.get_num_threads())
    return out


# ---- part: smollm2 --------------------------------------------------------------------------------

def lm_row(row: str, args) -> dict:
    import torch

    from sparseft.compress.quantize import DynamicInt8Config, GPTQConfig, NF4Config, RTNConfig, quantize_
    from sparseft.compress.calibration import calibration_batches
    from sparseft.eval.cost import count_parameters
    from sparseft.eval.evaluate import evaluate
    from sparseft.export.compressed import export_compressed
    from sparseft.load.data import DataConfig, build_task_data
    from sparseft.load.model import load_model, load_tokenizer

    tok = load_tokenizer(args.lm_model)
    cfg = DataConfig(task="lm", train=args.wiki, block_size=args.window_len, eval_fraction=0.1,
                     eval_limit=args.windows, train_limit=args.calib_windows)
    data = build_task_data(cfg, tok)
    model = load_model(args.lm_model, "lm").eval()
    out: dict = {"row": row, "eval_windows": len(data.eval)}
    fp32_bytes = 4 * count_parameters(model)["params"]
    t0 = time.perf_counter()
    grid = dict(bits=4, granularity="group", group_size=args.group_size)
    if row == "dyn_int8":
        quantize_(model, DynamicInt8Config())
    elif row == "rtn_int8":
        quantize_(model, RTNConfig(bits=8))
    elif row == "rtn_int4":
        quantize_(model, RTNConfig(**grid))
    elif row in ("gptq_int4", "gptq_int4_seq"):
        batches = calibration_batches(data.train, tok.pad_token_id or 0, args.calib_windows, 4)
        quantize_(model, GPTQConfig(**grid, sequential=row == "gptq_int4_seq"), batches=batches)
        out["calib_windows"] = len(data.train)
    elif row == "nf4":
        quantize_(model, NF4Config(block_size=64))
    elif row != "fp32":
        raise ValueError(f"unknown smollm2 row {row!r}; rows: {LM_ROWS}")
    out["quantize_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = evaluate(model, data, pad_id=tok.pad_token_id or 0, batch_size=4)
    out.update(perplexity=res["perplexity"], eval_tokens=res["n_tokens"], eval_seconds=time.perf_counter() - t0)
    if row == "fp32":
        out.update(size_bytes=fp32_bytes, size_kind="4 bytes x parameters (tied once)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out["size_bytes"] = export_compressed(model, tmp)["weights_bytes"]
        out["size_kind"] = "compressed"
    out["threads"] = torch.get_num_threads()
    return out


# ---- driver -------------------------------------------------------------------------------------

def child(part: str, row: str, spec_file: str, out_file: str) -> int:
    args = argparse.Namespace(**json.loads(Path(spec_file).read_text()))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = minilm_row(row, args) if part == "minilm" else lm_row(row, args)
    result.update(wall_seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
    Path(out_file).write_text(json.dumps(result, default=str))
    return 0


def run_row(part: str, row: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps(vars(args)))
        rc = subprocess.call([sys.executable, __file__, "--child", part, row, str(spec), str(out)], cwd=ROOT)
        if rc != 0 or not out.exists():
            return {"row": row, "error": f"exit code {rc}"}
        return json.loads(out.read_text())


def finish_rows(part: str, rows: list[dict]) -> None:
    """Ratios against the fp32 row: speedups, size ratio, F1 / perplexity deltas."""
    base = next((r for r in rows if r.get("row") == "fp32" and "error" not in r), None)
    if not base:
        return
    for r in rows:
        if "size_bytes" in r and base.get("size_bytes"):
            r["smaller_than_fp32"] = base["size_bytes"] / r["size_bytes"]
        if part == "minilm" and "f1" in r:
            r["delta_f1"] = r["f1"] - base["f1"]
            if "throughput_seq_s_b32" in r:
                r["throughput_speedup_b32"] = r["throughput_seq_s_b32"] / base["throughput_seq_s_b32"]
                r["latency_speedup_b1"] = base["latency_ms_b1"] / r["latency_ms_b1"]
        if part == "smollm2" and "perplexity" in r:
            r["ppl_ratio_vs_fp32"] = r["perplexity"] / base["perplexity"]


def run_part(part: str, args) -> Path | None:
    from sparseft.utils.env import describe_environment

    need = {"linear": [], "minilm": [args.conll_dev, f"{args.model_dir}/config.json"],
            "smollm2": [args.wiki]}[part]
    missing = [p for p in need if not (ROOT / p).exists()]
    if missing:
        print(f"skip {part}: missing {missing}")
        return None
    t0 = time.perf_counter()
    if part == "linear":
        rows = linear_part(args)
    else:
        rows = []
        for row in args.rows or (MINILM_ROWS if part == "minilm" else LM_ROWS):
            if row not in (MINILM_ROWS if part == "minilm" else LM_ROWS):
                continue
            print(f"[{part}] {row}", flush=True)
            rows.append(run_row(part, row, args))
            if "skipped" in rows[-1]:
                print(f"  skipped: {rows[-1]['skipped']}")
        finish_rows(part, rows)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    command = " ".join(["python", "benchmarks/bench_quant.py", *sys.argv[1:]])
    name = f"quant_{part}{args.record_suffix}"
    record = {"experiment": name, "command": command,
              "data": data_note(args), "quick": args.quick, "env": describe_environment(),
              "wall_seconds": time.perf_counter() - t0, "rows": rows}
    folder = (ROOT / "benchmarks" / "runs" / "quant_quick" / "results") if args.quick else RESULTS
    path = write_json(folder / f"{name}-{stamp}.json", record)
    print(f"wrote {path.relative_to(ROOT)}")
    keys = ("row", "kernel", "shape", "tokens", "median_us", "speedup_vs_fp32", "f1", "delta_f1", "perplexity",
            "smaller_than_fp32", "throughput_speedup_b32", "latency_speedup_b1", "skipped", "error")
    for r in rows:
        print("  " + ", ".join(f"{k}={r[k]:.4g}" if isinstance(r.get(k), float) else f"{k}={r[k]}"
                               for k in keys if r.get(k) is not None))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts (default: all, in order)")
    p.add_argument("--rows", nargs="+", help=f"only these rows (minilm: {', '.join(MINILM_ROWS)}; "
                                              f"smollm2: {', '.join(LM_ROWS)})")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny limits, results under benchmarks/runs/")
    p.add_argument("--record-suffix", default="", help="appended to the record name (e.g. _selection for a run "
                                                      "on a held-out selection file given with --wiki)")
    p.add_argument("--model-dir", default="benchmarks/runs/conll2003_full/model",
                   help="fine-tuned MiniLM NER folder (the lead's CoNLL baseline run)")
    p.add_argument("--sparse-model", default="", help="50%%-sparse fine-tuned folder (default: one-shot "
                                                      "magnitude 50%% of --model-dir, no recovery)")
    p.add_argument("--structured-model", default="", help="structurally pruned fine-tuned folder (default: "
                                                          "bench_prune's structured run if present, else one-shot)")
    p.add_argument("--structured-args", default='{"ffn_sparsity": 0.5, "drop_layers": [5]}',
                   help="StructuredPruneConfig fields (JSON) for the one-shot fallback")
    p.add_argument("--kmeans-args", default='{"levels": 16, "importance": "activation"}',
                   help="KMeansConfig fields (JSON) of the kmeans16 row")
    p.add_argument("--embed-bits", type=int, default=8, help="embedding bits in the pruned+int8 rows (0: fp32)")
    p.add_argument("--group-size", type=int, default=128, help="group size of int4 RTN / GPTQ")
    add_model_eval_args(p, calib_samples_help="CoNLL train sentences for k-means calibration",
                        conll_train_help="CoNLL train file (calibration)",
                        calib_windows_help="WikiText-2 GPTQ calibration windows")
    add_timing_args(p)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    prepare(ROOT)
    if args.child:
        return child(*args.child)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the linear part runs in this process
    if args.quick:
        args.eval_limit = args.eval_limit or 16
        args.calib_samples, args.windows, args.calib_windows = 8, 2, 2
        args.window_len, args.repeats = min(args.window_len, 64), 2
    return run_parts(args.only or PARTS, run_part, args)


if __name__ == "__main__":
    sys.exit(main())

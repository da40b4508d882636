"""Precision and int8 kernels on this CPU, against the obvious alternatives, in one run (issue 17).

    python benchmarks/bench_precision.py                          # every part (~30 min on 2 idle cores)
    python benchmarks/bench_precision.py --only minilm train      # some parts
    python benchmarks/bench_precision.py --only minilm --rows fp32 bf16_weights ort_int8
    python benchmarks/bench_precision.py --quick                  # smoke test: tiny limits, not in results/
                                                                  # (a tiny random NER model if the baseline is missing)

Parts (every row runs in its own process, so its peak memory is its own):

  minilm   the fine-tuned MiniLM CoNLL-2003 model (--model-dir, default: the conll2003_full
           baseline of benchmarks/run.py) on CoNLL dev: entity F1, CPU throughput at batch 32 and
           latency at batch 1 (64 tokens), size, for fp32, bf16 / fp16 weights, bf16 autocast,
           our dynamic int8 (kernel auto = timed and error-gated on the calibration sentences,
           plus each kernel: onednn per-token, onednn_tensor per-tensor, int_mm), static int8 (calibrated
           on the first --calib-samples training sentences), dynamic int8 + int8 embeddings,
           torch.ao quantize_dynamic, torchao int8 (if installed: pip install -e .[quant]),
           onnxruntime fp32 and dynamic int8 (export/onnx.py).
  smollm2  SmolLM2-135M: WikiText-2 perplexity (bench_quant.py's windows) and greedy decoding
           speed at batch 1 (tokens/s over --new-tokens after a --prompt-tokens prompt) for fp32,
           bf16 weights, bf16 autocast, dynamic int8 (auto; per-tensor oneDNN beside it) / static
           int8, torch.ao quantize_dynamic, torchao
           (fp16 weights with `--rows fp16_weights`: slow without fp16 units). ONNX covers encoders
           only; llama.cpp is bench_gguf.py.
  train    one MiniLM training step (forward + backward + AdamW) on CoNLL batches of --train-batch
           sentences, fp32 vs bf16 autocast (median of --train-steps), plus what
           `mixed_precision: auto` decides here and why (train/precision.py).

The record's `hardware` (utils/hardware.py) names the CPU's units (AVX2, AVX-512, VNNI,
AVX512-BF16, AMX, NEON/SVE/BF16); the numbers mean something only next to it. `targets`
compares with issue 17's targets for this hardware class.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
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
PARTS = ("minilm", "smollm2", "train")
MINILM_ROWS = ("fp32", "bf16_weights", "fp16_weights", "bf16_autocast", "dyn_int8", "dyn_int8_onednn",
               "dyn_int8_onednn_tensor", "dyn_int8_int_mm", "static_int8", "dyn_int8_emb8", "torch_qdynamic",
               "torchao_int8", "ort_fp32", "ort_int8")
LM_ROWS = ("fp32", "bf16_weights", "fp16_weights", "bf16_autocast", "dyn_int8", "dyn_int8_onednn_tensor",
           "static_int8", "torch_qdynamic", "torchao_int8")
# fp16 SmolLM2 runs ~15x slower than fp32 on CPUs without fp16 units (~15 min): only with --rows
LM_DEFAULT = tuple(r for r in LM_ROWS if r != "fp16_weights")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def autocast(row: str):
    """bf16 autocast around inference for the *_autocast rows; a no-op otherwise."""
    import torch

    if row == "bf16_autocast":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def quantize_row(model, row: str, calib, names: set[str]):
    """Apply the row's precision / quantizer to `model`; returns (model, notes dict)."""
    import torch

    from sparseft.compress.quantize import (DynamicInt8Config, HalfPrecisionConfig, RTNConfig, StaticInt8Config,
                                            quantize_)

    notes: dict = {}
    if row in ("bf16_weights", "fp16_weights"):
        quantize_(model, HalfPrecisionConfig(dtype="bfloat16" if row.startswith("bf16") else "float16"))
    elif row in ("dyn_int8", "dyn_int8_emb8"):
        # backend auto: timed on the layer shapes, error-gated on the calibration examples
        cfg, choice = DynamicInt8Config().resolve(model, batches=calib())
        quantize_(model, cfg)
        notes["kernel"] = choice["choice"]
        notes["kernel_reason"] = choice["reason"]
        notes["kernel_relative_time"] = {k: round(v["relative_time"], 3) for k, v in choice["candidates"].items()}
        notes["kernel_worst_layer_sqnr_db"] = {k: round(v["sqnr_db"], 1) for k, v in choice["candidates"].items()}
        if row == "dyn_int8_emb8":
            quantize_(model, RTNConfig(bits=8, targets=["Embedding"], ignore=[]))
            notes["notes"] = "int8 RTN per-row word/position embeddings (QuantEmbedding)"
    elif row in ("dyn_int8_onednn", "dyn_int8_onednn_tensor", "dyn_int8_int_mm"):
        quantize_(model, DynamicInt8Config(backend=row.removeprefix("dyn_int8_")))
    elif row == "static_int8":
        quantize_(model, StaticInt8Config(), batches=calib())
    elif row == "torch_qdynamic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(model, names, dtype=torch.qint8)
    elif row == "torchao_int8":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig
        from torchao.quantization import quantize_ as ao_quantize_

        ao_quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in names)
    elif row not in ("fp32", "bf16_autocast"):
        raise ValueError(f"unknown row {row!r}")
    return model, notes


def model_size(model, row: str) -> tuple[int, str]:
    """Bytes on disk and how they were measured."""
    import torch

    from sparseft.eval.cost import size_on_disk
    from sparseft.export.compressed import export_compressed

    if row in ("fp32", "bf16_autocast", "bf16_weights", "fp16_weights"):
        return size_on_disk(model), "save_pretrained"
    if row.startswith("dyn_int8") or row == "static_int8":
        with tempfile.TemporaryDirectory() as tmp:
            return export_compressed(model, tmp)["weights_bytes"], "compressed"
    with tempfile.TemporaryDirectory() as tmp:  # torch.ao, torchao: no exporter of ours
        torch.save(model.state_dict(), Path(tmp) / "m.pt")
        return (Path(tmp) / "m.pt").stat().st_size, "torch.save(state_dict)"


# ---- part: minilm ------------------------------------------------------------------------------

def minilm_row(row: str, args) -> dict:
    import torch

    from sparseft.compress.calibration import calibration_batches
    from sparseft.compress.quantize.layers import default_ignore, target_linears
    from sparseft.eval.cost import time_forward
    from sparseft.eval.evaluate import evaluate
    from sparseft.load.data import DataConfig, build_eval_data
    from sparseft.load.model import load_model, load_tokenizer, model_labels

    tok = load_tokenizer(args.model_dir)
    model = load_model(args.model_dir, "ner").eval()
    labels = model_labels(model)
    data = build_eval_data(DataConfig(task="ner", max_length=128, eval_limit=args.eval_limit), tok, labels,
                           args.conll_dev)
    pad = tok.pad_token_id or 0

    def calib():
        feats = build_eval_data(DataConfig(task="ner", max_length=128, eval_limit=args.calib_samples), tok, labels,
                                args.conll_train).eval
        return calibration_batches(feats, pad, args.calib_samples, 8)

    out: dict = {"row": row}
    names = {fqn for fqn, _ in target_linears(model, ["Linear"], default_ignore())}
    t0 = time.perf_counter()
    if row in ("ort_fp32", "ort_int8"):
        from sparseft.export.onnx import OnnxEncoder, export_onnx

        tmp = tempfile.mkdtemp()
        stats = export_onnx(model, Path(tmp) / "onnx", int8=row == "ort_int8")
        model = OnnxEncoder(Path(tmp) / "onnx", int8=row == "ort_int8", threads=torch.get_num_threads())
        out.update(size_bytes=stats["int8_bytes"] or stats["onnx_bytes"], size_kind="onnx file",
                   onnx_check=stats["verify"])
    else:
        try:
            model, notes = quantize_row(model, row, calib, names)
        except ImportError as exc:
            return {**out, "skipped": f"{exc} (pip install -e .[quant])"}
        out.update(notes)
        out["size_bytes"], out["size_kind"] = model_size(model, row)
    out["prepare_seconds"] = time.perf_counter() - t0
    with autocast(row):
        out["f1"] = evaluate(model, data, pad_id=pad, batch_size=64)["f1"]
        out["latency_ms_b1"] = 1000 * time_forward(model, batch=1, seq_len=args.seq_len, repeats=args.repeats)
        thr = time_forward(model, batch=32, seq_len=args.seq_len, repeats=max(3, args.repeats // 2))
    out.update(throughput_seq_s_b32=32 / thr, threads=torch.get_num_threads())
    return out


# ---- part: smollm2 --------------------------------------------------------------------------------

def lm_row(row: str, args) -> dict:
    import torch

    from sparseft.compress.calibration import calibration_batches
    from sparseft.compress.quantize.layers import default_ignore, target_linears
    from sparseft.eval.evaluate import evaluate
    from sparseft.load.data import DataConfig, build_task_data
    from sparseft.load.model import load_model, load_tokenizer

    tok = load_tokenizer(args.lm_model)
    cfg = DataConfig(task="lm", train=args.wiki, block_size=args.window_len, eval_fraction=0.1,
                     eval_limit=args.windows, train_limit=args.calib_windows)
    data = build_task_data(cfg, tok)
    model = load_model(args.lm_model, "lm").eval()
    pad = tok.pad_token_id or 0
    out: dict = {"row": row, "eval_windows": len(data.eval)}
    names = {fqn for fqn, _ in target_linears(model, ["Linear"], default_ignore())}
    t0 = time.perf_counter()
    try:
        model, notes = quantize_row(model, row, lambda: calibration_batches(data.train, pad, args.calib_windows, 4),
                                    names)
    except ImportError as exc:
        return {**out, "skipped": f"{exc} (pip install -e .[quant])"}
    out.update(notes, prepare_seconds=time.perf_counter() - t0)
    out["size_bytes"], out["size_kind"] = model_size(model, row)
    prompt = torch.tensor([data.eval[0]["input_ids"][:args.prompt_tokens]])
    with autocast(row), torch.inference_mode():
        out["perplexity"] = evaluate(model, data, pad_id=pad, batch_size=4)["perplexity"]
        gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=pad)
        model.generate(prompt, **{**gen, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        times = []
        for _ in range(args.decode_repeats):
            t0 = time.perf_counter()
            model.generate(prompt, **gen)
            times.append(time.perf_counter() - t0)
    out.update(decode_tokens_s_b1=args.new_tokens / statistics.median(times), prompt_tokens=prompt.shape[1],
               threads=torch.get_num_threads())
    return out


# ---- part: train ----------------------------------------------------------------------------------

def train_part(args) -> list[dict]:
    import torch

    from sparseft.load.data import DataConfig, build_eval_data
    from sparseft.load.model import load_model, load_tokenizer, model_labels
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.precision import choose_precision, step_probe

    tok = load_tokenizer(args.model_dir)
    model = load_model(args.model_dir, "ner")
    feats = build_eval_data(DataConfig(task="ner", max_length=128, eval_limit=args.train_batch * args.train_steps),
                            tok, model_labels(model), args.conll_train).eval
    collate = PadCollator(tok.pad_token_id or 0)
    batches = [collate(feats[i:i + args.train_batch]) for i in range(0, len(feats), args.train_batch)]
    rows = []
    for precision in ("no", "bf16"):
        m = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
        times = []
        for i, batch in enumerate([batches[0]] + batches):  # the first step warms up
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = m(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - t0)
        rows.append({"row": "fp32" if precision == "no" else "bf16_autocast", "seconds_per_step": statistics.median(times),
                     "tokens_per_step": int(sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)),
                     "batch": args.train_batch, "steps": len(times), "threads": torch.get_num_threads()})
    rows[1]["speedup_vs_fp32"] = rows[0]["seconds_per_step"] / rows[1]["seconds_per_step"]
    choice = choose_precision("auto", probe=step_probe(model, batches[0], lambda mm, b: mm(**b).loss))
    rows.append({"row": "auto", "mixed_precision": choice.precision, "reason": choice.reason})
    return rows


# ---- driver -----------------------------------------------------------------------------------------

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


def finish(part: str, rows: list[dict]) -> None:
    """Ratios against fp32 (and bf16 weights): speedups, size, F1 / perplexity deltas."""
    ok = {r["row"]: r for r in rows if "error" not in r and "skipped" not in r}
    base, bf16 = ok.get("fp32"), ok.get("bf16_weights")
    if not base:
        return
    for r in ok.values():
        if r.get("size_bytes") and base.get("size_bytes"):
            r["smaller_than_fp32"] = base["size_bytes"] / r["size_bytes"]
        if "f1" in r:
            r["delta_f1"] = r["f1"] - base["f1"]
            r["throughput_vs_fp32"] = r["throughput_seq_s_b32"] / base["throughput_seq_s_b32"]
            r["latency_speedup_b1"] = base["latency_ms_b1"] / r["latency_ms_b1"]
            if bf16:
                r["throughput_vs_bf16_weights"] = r["throughput_seq_s_b32"] / bf16["throughput_seq_s_b32"]
        if "perplexity" in r:
            r["ppl_ratio_vs_fp32"] = r["perplexity"] / base["perplexity"]
            r["decode_vs_fp32"] = r["decode_tokens_s_b1"] / base["decode_tokens_s_b1"]


def targets(part: str, rows: list[dict], hw) -> dict:
    """Issue 17's targets for this hardware class, with the measured value."""
    ok = {r["row"]: r for r in rows if "error" not in r and "skipped" not in r}
    out: dict = {"hardware class": hw.hardware_class}
    if part == "train" and "bf16_autocast" in ok:
        out["bf16 training step speed-up (native bf16 target >= 1.3x)"] = ok["bf16_autocast"]["speedup_vs_fp32"]
        out["auto picks"] = ok.get("auto", {}).get("mixed_precision")
    if part == "minilm" and "fp32" in ok:
        int8 = [r for k, r in ok.items() if ("int8" in k or k == "torch_qdynamic") and r["delta_f1"] >= -0.005]
        best = max(int8, key=lambda r: r["throughput_seq_s_b32"], default=None)
        if best:
            out["best int8 at <= 0.5 F1 loss"] = best["row"]
            out["its throughput vs fp32 (AVX2 target >= 2x)"] = best["throughput_vs_fp32"]
            if "throughput_vs_bf16_weights" in best:
                out["its throughput vs bf16 weights (native bf16 target >= 1.3x)"] = best["throughput_vs_bf16_weights"]
        fastest = max(ok.values(), key=lambda r: r["throughput_seq_s_b32"])
        out["fastest row overall"] = fastest["row"]
    return out


CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def quick_model(args) -> None:
    """--quick without the CoNLL baseline: a tiny random BERT NER model (MiniLM's tokenizer) stands
    in, so the minilm and train parts run end to end in seconds (their numbers mean nothing)."""
    if (ROOT / args.model_dir / "config.json").exists():
        return
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from sparseft.load.model import load_tokenizer

    path = ROOT / "benchmarks" / "runs" / "precision_quick" / "tiny_ner"
    if not (path / "config.json").exists():
        tok = load_tokenizer("minilm")
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=512, pad_token_id=tok.pad_token_id or 0,
                         num_labels=len(CONLL_LABELS), id2label=dict(enumerate(CONLL_LABELS)),
                         label2id={lab: i for i, lab in enumerate(CONLL_LABELS)})
        BertForTokenClassification(cfg).save_pretrained(path)
        tok.save_pretrained(path)
    print(f"--quick: {args.model_dir} not found, using a tiny random NER model ({path.relative_to(ROOT)})")
    args.model_dir = str(path.relative_to(ROOT))


def run_part(part: str, args) -> Path | None:
    from sparseft.utils.env import describe_environment
    from sparseft.utils.hardware import detect

    need = {"minilm": [args.conll_dev, f"{args.model_dir}/config.json"], "smollm2": [args.wiki],
            "train": [args.conll_train, f"{args.model_dir}/config.json"]}[part]
    missing = [p for p in need if not (ROOT / p).exists()]
    if missing:
        print(f"skip {part}: missing {missing}")
        return None
    t0 = time.perf_counter()
    if part == "train":
        rows = train_part(args)
    else:
        rows, allowed = [], MINILM_ROWS if part == "minilm" else LM_ROWS
        for row in [r for r in (args.rows or (MINILM_ROWS if part == "minilm" else LM_DEFAULT)) if r in allowed]:
            print(f"[{part}] {row}", flush=True)
            rows.append(run_row(part, row, args))
            for key in ("skipped", "error"):
                if key in rows[-1]:
                    print(f"  {key}: {rows[-1][key]}")
        finish(part, rows)
    hw = detect()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    record = {"experiment": f"precision_{part}", "command": " ".join(["python", "benchmarks/bench_precision.py",
                                                                       *sys.argv[1:]]),
              "description": f"CPU precision and int8 kernels, part {part}; CPU units: {hw.summary()}",
              "data": data_note(args), "quick": args.quick, "env": describe_environment(), "hardware": hw.to_dict(),
              "wall_seconds": time.perf_counter() - t0, "rows": rows, "targets": targets(part, rows, hw)}
    folder = (ROOT / "benchmarks" / "runs" / "precision_quick" / "results") if args.quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"precision_{part}-{stamp}.json"
    write_json(path, record)
    print(f"wrote {path.relative_to(ROOT)}")
    keys = ("row", "f1", "delta_f1", "perplexity", "throughput_seq_s_b32", "throughput_vs_fp32", "latency_ms_b1",
            "decode_tokens_s_b1", "seconds_per_step", "speedup_vs_fp32", "smaller_than_fp32", "kernel",
            "mixed_precision", "reason", "skipped", "error")
    for r in rows:
        print("  " + ", ".join(f"{k}={r[k]:.4g}" if isinstance(r.get(k), float) else f"{k}={r[k]}"
                               for k in keys if r.get(k) is not None))
    return path


def data_note(args) -> str:
    dev = f"first {args.eval_limit} sentences" if args.eval_limit else "all 3,250 sentences"
    return (f"CoNLL-2003 dev = eng.testa, {dev}; static int8 calibration = first {args.calib_samples} sentences of "
            f"eng.train; train part = first {args.train_batch * args.train_steps} sentences of eng.train in batches of "
            f"{args.train_batch}. WikiText-2: {args.window_len}-token windows of wiki.valid.tokens, eval = first "
            f"{args.windows} windows of the last 10%, static calibration = first {args.calib_windows} windows of the "
            f"rest; decoding = greedy, {args.new_tokens} new tokens after {args.prompt_tokens} prompt tokens, median of "
            f"{args.decode_repeats}. Timing: random ids, seq_len {args.seq_len}, median of {args.repeats} calls, "
            f"{args.threads or 'default'} threads.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts (default: all, in order)")
    p.add_argument("--rows", nargs="+", help=f"only these rows (minilm: {', '.join(MINILM_ROWS)}; "
                                              f"smollm2: {', '.join(LM_ROWS)})")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny limits, records under benchmarks/runs/")
    p.add_argument("--model-dir", "--model", dest="model_dir", default="benchmarks/runs/conll2003_full/model",
                   help="fine-tuned MiniLM NER folder (the CoNLL-2003 full fine-tuning baseline)")
    add_model_eval_args(p, calib_samples_help="CoNLL train sentences for static int8",
                        conll_train_help="CoNLL train file (calibration, train part)",
                        calib_windows_help="WikiText-2 windows for static int8 calibration")
    p.add_argument("--prompt-tokens", type=int, default=32, help="decoding prompt length")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per decoding run")
    p.add_argument("--decode-repeats", type=int, default=3, help="decoding runs (median)")
    p.add_argument("--train-batch", type=int, default=32, help="sentences per training step (train part)")
    p.add_argument("--train-steps", type=int, default=8, help="timed training steps per precision")
    add_timing_args(p)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    prepare(ROOT)
    if args.child:
        return child(*args.child)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the train part runs in this process
    if args.quick:
        args.eval_limit = args.eval_limit or 16
        args.calib_samples, args.windows, args.calib_windows = 8, 2, 2
        args.window_len, args.repeats, args.new_tokens, args.decode_repeats = min(args.window_len, 64), 2, 4, 1
        args.train_batch, args.train_steps = 4, 2
        if {"minilm", "train"} & set(args.only or PARTS):
            quick_model(args)
    return run_parts(args.only or PARTS, run_part, args)


if __name__ == "__main__":
    sys.exit(main())

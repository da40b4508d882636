"""Low-rank factorization benchmarks: MiniLM on CoNLL-2003 dev, SmolLM2-135M perplexity on WikiText-2.

    python benchmarks/bench_factorize.py                                  # both parts, every method
    python benchmarks/bench_factorize.py --only smollm2 --methods whiten_svd asvd
    python benchmarks/bench_factorize.py --only minilm --ratios 0.3
    python benchmarks/bench_factorize.py --limit 16 --teacher T --lm-model M --lm-data F   # smoke test

Parts (each run is `sparseft run <recipe> <overrides>` in its own process, via bench_prune's
child runner, so its peak memory is its own):

  minilm   the full-fine-tuning baseline MiniLM (the `conll2003_full` experiment's model, all 14,041
           sentences, dev F1 0.911: run `python benchmarks/run.py conll2003_full` first; `make bench`
           does) with 20 / 30 / 50%
           fewer encoder-Linear parameters, per method: dev F1 of the dense model, right after
           factorizing and after `--epochs` (1) epoch(s) of recovery fine-tuning of the factors
           with distillation from the dense model; size on disk, CPU latency (batch 1) and
           throughput (batch 32, 64 tokens) before and after (recipes/minilm_conll2003_factorize.yaml).
  smollm2  SmolLM2-135M, 10 / 20 / 30% fewer block-Linear parameters, per method, no fine-tuning;
           WikiText-2 perplexity with the pruning benchmark's windows and its 128 calibration
           windows (recipes/smollm2_wikitext2_factorize.yaml). Beside them, at the same stored
           size: SparseGPT and Wanda at sparsity ratio + 1/32 (fp32 values of the kept weights
           plus a 1-bit mask per weight, the compressed-bitmask storage, take as many bytes as
           the factors at that ratio), the dense model, and the existing 50% records
           (benchmarks/results/prune_lm_calib128-*.json) as reference rows.

One JSON record per part goes to benchmarks/results/factorize_<part>-<UTC stamp>.json
(`--limit`: under benchmarks/runs/factorize_quick/results, never results/).

`--reuse RECORD` completes a stopped benchmark: a planned run whose exact command (recipe and
overrides) has an error-free row in RECORD is not run again; its row is copied with
`reused_from` naming RECORD, and the new record lists RECORD, its command and environment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prune import run_in_child  # noqa: E402  one child runner for every recipe benchmark

ROOT = Path(__file__).resolve().parent.parent
from benchlib import CONLL_TRAIN, WIKI, prepare, run_parts, write_json  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"
PARTS = ("minilm", "smollm2")
METHODS = ("svd", "asvd", "whiten_svd", "fisher_svd")
MINILM_RATIOS = (0.2, 0.3, 0.5)
SMOLLM2_RATIOS = (0.1, 0.2, 0.3)
TEACHER = "benchmarks/runs/conll2003_full/model"
R = "recipes/"
ENCODER = [r"re:encoder\.layer"]
MASK_BITS = 1 / 32   # a 1-bit mask per fp32 weight


def run_dir(args) -> str:
    return "benchmarks/runs/factorize" + ("_quick" if args.limit else "")


def pct(ratio: float) -> int:
    return int(round(ratio * 100))


def plan(part: str, args) -> list[dict]:
    """The runs of one part: {name, recipe, overrides, row}."""
    base, runs = run_dir(args), []
    if part == "minilm":
        for ratio in args.ratios or MINILM_RATIOS:      # ratio-major: a stopped run keeps whole sizes
            for method in args.methods:
                name = f"minilm_{method}_{pct(ratio)}"
                fargs = json.dumps({"ratio": ratio, "targets": ENCODER})
                over = [f"output_dir={base}/{name}", f"model={args.teacher}", f"stages.recover.factorizer={method}",
                        f"stages.recover.factorizer_args={fargs}", f"stages.recover.epochs={args.epochs}"]
                if args.limit:
                    over += [f"data.train_limit={args.limit}", f"data.eval_limit={args.limit}",
                             "stages.recover.max_steps=2", "stages.recover.batch_size=8",
                             f"stages.recover.calib_samples={min(args.limit, 8)}", "stages.recover.repeats=1"]
                runs.append({"name": name, "recipe": R + "minilm_conll2003_factorize.yaml", "overrides": over,
                             "row": {"method": method, "ratio": ratio, "epochs": args.epochs, "distill": True}})
        return runs
    lm = [f"model={args.lm_model}"] + ([f"data.train={args.lm_data}"] if args.lm_data else [])
    quick = ["data.block_size=64", "data.eval_limit=2"] if args.limit else []
    calib = 2 if args.limit else 128
    runs.append({"name": "smollm2_dense", "recipe": R + "smollm2_wikitext2_prune.yaml",
                 "overrides": [f"output_dir={base}/smollm2_dense", "stages.prune.pruner=magnitude",
                               'stages.prune.pruner_args={"sparsity": 0.0}', "stages.prune.calib_samples=0"] + lm + quick,
                 "row": {"method": "dense", "ratio": 0.0}})
    for method in args.methods:
        for ratio in args.ratios or SMOLLM2_RATIOS:
            name = f"smollm2_{method}_{pct(ratio)}"
            runs.append({"name": name, "recipe": R + "smollm2_wikitext2_factorize.yaml",
                         "overrides": [f"output_dir={base}/{name}", f"stages.factorize.factorizer={method}",
                                       f"stages.factorize.factorizer_args={json.dumps({'ratio': ratio})}",
                                       f"stages.factorize.calib_samples={calib}"] + lm + quick,
                         "row": {"method": method, "ratio": ratio}})
    if not args.no_pruning:
        for pruner in ("sparsegpt", "wanda"):
            for ratio in args.ratios or SMOLLM2_RATIOS:
                sparsity = round(ratio + MASK_BITS, 6)
                name = f"smollm2_{pruner}_size{pct(ratio)}"
                runs.append({"name": name, "recipe": R + "smollm2_wikitext2_prune.yaml",
                             "overrides": [f"output_dir={base}/{name}", f"stages.prune.pruner={pruner}",
                                           f"stages.prune.pruner_args={json.dumps({'sparsity': sparsity})}",
                                           f"stages.prune.calib_samples={calib}"] + lm + quick,
                             "row": {"method": pruner, "ratio": ratio, "sparsity": sparsity}})
    return runs


def needs(part: str, args) -> list[str]:
    if part == "minilm":
        return [CONLL_TRAIN, f"{args.teacher}/config.json"]
    return [] if args.lm_data else [WIKI]


def equivalent(spec: dict) -> str:
    """The run as one `sparseft run` command line."""
    return f"sparseft run {spec['recipe']} " + " ".join(shlex.quote(o) for o in spec["overrides"])


def summarize(part: str, spec: dict, result: dict) -> dict:
    st = result.get("stages", {})
    row = {"run": spec["name"], **spec["row"], "wall_seconds": result.get("wall_seconds"),
           "peak_rss_mb": result.get("peak_rss_mb"), "equivalent": equivalent(spec)}
    if "error" in result:
        return {**row, "error": result["error"]}
    if part == "smollm2":
        row.update(perplexity=st["ppl"]["perplexity"], eval_tokens=st["ppl"]["n_tokens"])
        fz = st.get("factorize")
        if fz:
            row.update(param_reduction=fz["param_reduction"], factorized_layers=fz["factorized_layers"],
                       dense_layers=len(fz["dense_layers"]), params=fz["params"],
                       factorize_seconds=fz["factorize_seconds"], max_whitening_damp=fz.get("max_whitening_damp"))
        else:
            row.update(target_sparsity=st["prune"]["target_sparsity"], prune_seconds=st["prune"]["prune_seconds"])
        return row
    rec, dev = st.get("recover", {}), st.get("dev", {})
    before, after = rec.get("cost_before") or {}, rec.get("cost_after") or {}
    row.update(f1_dense=rec.get("dense_f1"), f1_after_factorize=rec.get("f1_after_factorize"), f1=dev.get("f1"),
               param_reduction=rec.get("param_reduction"), params_before=before.get("params"),
               params_after=after.get("params"), size_mb_before=before.get("size_mb"),
               size_mb_after=after.get("size_mb"), latency_ms_b1_before=before.get("latency_ms_b1"),
               latency_ms_b1_after=after.get("latency_ms_b1"),
               throughput_b32_before=before.get("throughput_seq_s_b32"),
               throughput_b32_after=after.get("throughput_seq_s_b32"),
               throughput_speedup_b32=rec.get("throughput_speedup_b32"),
               latency_speedup_b1=rec.get("latency_speedup_b1"), train_seconds=rec.get("train_seconds"),
               factorize_seconds=rec.get("factorize_seconds"), per_layer_rank=rec.get("per_layer_rank"))
    if row["f1"] is not None and row["f1_dense"] is not None:
        row["delta_f1"] = row["f1"] - row["f1_dense"]
    return row


def reference_rows() -> list[dict]:
    """Dense / Wanda / SparseGPT rows of the newest 128-window pruning record (50% and 2:4)."""
    files = sorted(RESULTS.glob("prune_lm_calib128-*.json"))
    if not files:
        return []
    rec = json.loads(files[-1].read_text())
    keep = ("run", "pruner", "pattern", "sparsity", "perplexity", "ppl_ratio_vs_dense")
    return [{**{k: r.get(k) for k in keep}, "source": files[-1].name} for r in rec.get("rows", [])
            if "perplexity" in r]


def targets(part: str, rows: list[dict]) -> dict:
    """The issue's targets, measured (None where the run is missing)."""
    ok = [r for r in rows if "error" not in r]
    if part == "minilm":
        at30 = [r for r in ok if r.get("ratio") == 0.3 and r.get("delta_f1") is not None]
        best = max(at30, key=lambda r: r["delta_f1"], default=None)
        return {"30% fewer encoder params: best method": best and best["method"],
                "  its F1 change after recovery (target >= -0.01)": best and best["delta_f1"],
                "  its CPU throughput speedup b32 (target >= 1.25x)": best and best.get("throughput_speedup_b32")}
    ppl = {r["method"]: r["perplexity"] for r in ok if r.get("ratio") == 0.2 and "perplexity" in r}
    dense = next((r["perplexity"] for r in ok if r.get("method") == "dense"), None)
    order = [ppl.get(m) for m in ("whiten_svd", "asvd", "svd")]
    return {"20%: whitened SVD ppl / dense (target <= 1.3)": ppl.get("whiten_svd") / dense
            if dense and ppl.get("whiten_svd") else None,
            "20%: whitened < activation-aware < plain SVD": (order[0] < order[1] < order[2])
            if None not in order else None}


def reusable(part: str, record: Path | None) -> tuple[dict, dict]:
    """{equivalent command: (row, details)} of RECORD's error-free rows, and RECORD's provenance."""
    if record is None:
        return {}, {}
    rec = json.loads(record.read_text())
    if rec.get("experiment") != f"factorize_{part}":
        raise SystemExit(f"--reuse {record}: experiment {rec.get('experiment')!r} is not factorize_{part}")
    details = {d["run"]: d for d in rec.get("details", [])}
    rows = {r["equivalent"]: (r, details.get(r["run"], {"run": r["run"]})) for r in rec.get("rows", [])
            if "error" not in r and r.get("equivalent")}
    return rows, {"record": record.name, "command": rec.get("command"), "env": rec.get("env")}


def write_record(path: Path, part: str, args, rows: list[dict], details: list[dict], t0: float, *,
                 planned: int, reused: dict | None = None) -> None:
    """The part's JSON record with the rows so far (`complete`: all `planned` runs are in)."""
    from sparseft.utils.env import describe_environment

    rows = [dict(r) for r in rows]
    if part == "smollm2":
        dense = next((r["perplexity"] for r in rows if r.get("method") == "dense" and "perplexity" in r), None)
        for r in rows:
            if dense and "perplexity" in r:
                r["ppl_ratio_vs_dense"] = r["perplexity"] / dense
    data = ("CoNLL-2003: train = all 14,041 sentences of eng.train (recovery and calibration: its first 128); "
            "dev = eng.testa (3,250 sentences)" if part == "minilm" else
            "WikiText-2 wiki.valid.tokens, 512-token windows: eval = first 48 windows of the last 10%, "
            "calibration = first 128 windows of the rest")
    if args.limit:
        data += f" (smoke test: --limit {args.limit})"
    record = {"experiment": f"factorize_{part}", "command": " ".join(["python", "benchmarks/bench_factorize.py",
                                                                       *sys.argv[1:]]),
              "data": data, "quick": bool(args.limit), "complete": len(rows) == planned,
              "runs_done": len(rows), "runs_planned": planned, "env": describe_environment(),
              "wall_seconds": time.perf_counter() - t0, "rows": rows, "targets": targets(part, rows),
              "details": details}
    if reused and any(r.get("reused_from") for r in rows):
        record["reused"] = reused
    if part == "smollm2":
        record["reference_rows"] = reference_rows()
        record["notes"] = ("Same stored size: a factorization removing a fraction r of the targeted weights stores "
                           "(1 - r) of their fp32 values; unstructured sparsity s stores (1 - s) values plus a 1-bit "
                           "mask per weight, equal at s = r + 1/32.")
    write_json(path, record)


def run_part(part: str, args) -> Path | None:
    missing = [p for p in needs(part, args) if not (ROOT / p).exists()]
    if missing:
        hint = " (python benchmarks/run.py conll2003_full)" if part == "minilm" else ""
        print(f"skip {part}: missing {missing}{hint}")
        return None
    t0 = time.perf_counter()
    rows, details, specs = [], [], plan(part, args)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    folder = (ROOT / run_dir(args) / "results") if args.limit else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"factorize_{part}-{stamp}.json"
    old, provenance = reusable(part, args.reuse)
    for spec in specs:       # the record is rewritten after every run: a stopped benchmark keeps its rows
        if equivalent(spec) in old:
            print(f"[{part}] {spec['name']}: reused from {args.reuse.name}", flush=True)
            kept, detail = old[equivalent(spec)]
            rows.append({**kept, "reused_from": args.reuse.name})
            details.append(detail)
        else:
            print(f"[{part}] {spec['name']}", flush=True)
            result = run_in_child(spec)
            rows.append(summarize(part, spec, result))
            details.append({"run": spec["name"], "stages": result.get("stages")})
        write_record(path, part, args, rows, details, t0, planned=len(specs), reused=provenance)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    for r in json.loads(path.read_text())["rows"]:
        keys = ("run", "f1_after_factorize", "f1", "delta_f1", "perplexity", "ppl_ratio_vs_dense",
                "throughput_speedup_b32", "error")
        print("  " + ", ".join(f"{k}={r[k]:.4g}" if isinstance(r.get(k), float) else f"{k}={r[k]}"
                               for k in keys if r.get(k) is not None))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts (default: both)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="factorization methods")
    p.add_argument("--ratios", type=float, nargs="+",
                   help="fractions of the targeted parameters removed (default: 0.2 0.3 0.5 / 0.1 0.2 0.3)")
    p.add_argument("--epochs", type=int, default=1, help="minilm: recovery epochs with distillation (1-2)")
    p.add_argument("--teacher", default=TEACHER, help="minilm: the dense fine-tuned model")
    p.add_argument("--lm-model", default="smollm2", help="smollm2 part: model (alias or folder)")
    p.add_argument("--lm-data", default="", help="smollm2 part: text file replacing wiki.valid.tokens (smoke tests)")
    p.add_argument("--no-pruning", action="store_true", help="smollm2: skip the SparseGPT / Wanda runs")
    p.add_argument("--reuse", type=Path, default=None,
                   help="a stopped run's record: its error-free rows with the same command are kept, not re-run")
    p.add_argument("--limit", type=int, default=0,
                   help="smoke test: N examples, 2 steps, tiny windows; results under benchmarks/runs/factorize_quick")
    args = p.parse_args()
    if args.reuse is not None:
        if not args.reuse.is_file():
            p.error(f"--reuse {args.reuse}: no such record")
        args.reuse = args.reuse.resolve()
    prepare(ROOT)
    return run_parts(args.only or PARTS, run_part, args)


if __name__ == "__main__":
    sys.exit(main())

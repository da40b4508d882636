"""Score saved models the way a user does: `sparseft eval MODEL --data DEV --cost --json`, each in a
fresh process, one after another (never beside another job), against a baseline model.

The numbers are the artifact's: weights loaded from disk in their saved precision, dev scored and
CPU latency (batch 1) / throughput (batch 32, 64 tokens) measured by the same code for every model,
so speedups compare like with like. Used for the structured-pruning rows (issue 16 item 4), whose
in-process measurements had run in the training's bf16 autocast (fixed in train/loop.py).

    python benchmarks/bench_saved.py --record-name prune_structured_saved \\
        --baseline teacher=benchmarks/runs/headline/conll_full/model \\
        --models ffn75_drop1=benchmarks/runs/prune_full/conll_structured_ffn75_drop1/model ...
    python benchmarks/bench_saved.py --smoke ...        # --eval-limit 16, record under benchmarks/runs/

Record: benchmarks/results/<record-name>-<UTC stamp>.json (rows in the given order, baseline first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEV = "../shared/data/conll2003/eng.testa"


def named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {spec!r}")
    return name, path


def score(name: str, path: str, args) -> dict:
    """One `sparseft eval` in its own process; its metrics, cost and wall time."""
    exe = str(Path(sys.executable).with_name("sparseft"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        cmd = ["sparseft", "eval", path, "--data", args.data, "--cost"]
        if args.eval_limit:
            cmd += ["--eval-limit", str(args.eval_limit)]
        t0 = time.perf_counter()
        proc = subprocess.run([exe, *cmd[1:], "--json", str(out)], cwd=ROOT, capture_output=True, text=True)
        row = {"model": name, "path": path, "command": shlex.join(cmd), "wall_seconds": time.perf_counter() - t0}
        if proc.returncode != 0 or not out.exists():
            return row | {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
        sections = json.loads(out.read_text())["stages"]
    ev, cost = sections["eval"], sections["cost"]
    metric = "f1" if "f1" in ev else "accuracy"
    return row | {"metric": metric, "score": ev[metric], **{k: cost.get(k) for k in (
        "params", "size_mb", "latency_ms_b1", "throughput_seq_s_b32", "seq_len", "threads")}}


def with_ratios(rows: list[dict]) -> list[dict]:
    """Speedups and score change against the first row (the baseline)."""
    base = rows[0]
    for r in rows[1:]:
        if "error" in r or "error" in base:
            continue
        r["delta_score"] = r["score"] - base["score"]
        r["throughput_speedup_b32"] = r["throughput_seq_s_b32"] / base["throughput_seq_s_b32"]
        r["latency_speedup_b1"] = base["latency_ms_b1"] / r["latency_ms_b1"]
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=named, required=True, help="NAME=PATH of the reference model")
    p.add_argument("--models", type=named, nargs="+", required=True, help="NAME=PATH of each scored model")
    p.add_argument("--data", default=DEV, help="dev file (default: CoNLL-2003 eng.testa)")
    p.add_argument("--record-name", required=True, help="experiment name of the record")
    p.add_argument("--eval-limit", type=int, default=0, help="first N dev records only (smoke tests)")
    p.add_argument("--smoke", action="store_true", help="--eval-limit 16; record under benchmarks/runs/")
    args = p.parse_args()
    os.chdir(ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.smoke:
        args.eval_limit = args.eval_limit or 16
    missing = [path for _, path in [args.baseline, *args.models] if not (ROOT / path / "config.json").exists()]
    if missing:
        print(f"no saved model (config.json) in: {', '.join(missing)}", file=sys.stderr)
        return 2
    from sparseft.utils.env import describe_environment
    from sparseft.utils.hardware import detect
    from benchlib import write_json

    rows = []
    for name, path in [args.baseline, *args.models]:
        rows.append(score(name, path, args))
        print(json.dumps(rows[-1]), flush=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    record = {"experiment": args.record_name, "date": stamp, "env": describe_environment(),
              "hardware": detect().to_dict(), "command": "python benchmarks/bench_saved.py " + shlex.join(sys.argv[1:]),
              "data_subset": f"dev = {args.data}" + (f", first {args.eval_limit} records" if args.eval_limit else
                                                      " (all records)"),
              "smoke": args.smoke, "rows": with_ratios(rows)}
    dest = (ROOT / "benchmarks" / "runs" / "saved_smoke") if args.smoke else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{args.record_name}-{stamp}.json"
    write_json(path, record)
    print(f"wrote {path.relative_to(ROOT)}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

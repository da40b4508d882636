"""Time `sparseft demo` (what `make demo` runs) and record its comparison table.

Usage:
    python benchmarks/bench_demo.py            # the real demo: a few minutes on 2 idle CPU cores
    python benchmarks/bench_demo.py --quick    # smoke test of this script (record marked smoke)

Runs the demo in a child process into benchmarks/runs/demo (replacing an earlier demo there),
then writes benchmarks/results/demo-<UTC stamp>.json: the wall time of the whole command (model
loads included; the demo's budget is 5 minutes on 2 idle cores), the environment, and one row
per evaluated model (F1, trainable parameters, artifact and size, CPU latency b1 / throughput
b32, train time, peak memory). BENCHMARKS.md shows it after `python benchmarks/summarize.py`;
README's demo section takes its table and `benchmarks/runs/demo/pareto_size.png`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "benchmarks" / "runs" / "demo"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="sparseft demo --quick (smoke test; record marked smoke)")
    p.add_argument("--model", default="minilm", help="model alias or folder (another than minilm: smoke tests)")
    args = p.parse_args()
    from benchlib import write_json
    from sparseft.utils.env import describe_environment

    cmd = [sys.executable, "-m", "sparseft.cli.main", "demo", "-o", str(OUT), "--model", args.model,
           *(["--quick"] if args.quick else [])]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"sparseft demo failed (exit {rc})", file=sys.stderr)
        return rc
    points = json.loads((OUT / "comparison.json").read_text())["points"]
    rows = [{"run": p["label"], "f1": p["metric"], "trainable_params": p["trainable_params"],
             "artifact": p["artifact"], "size_mb": p["artifact_mb"], "latency_ms_b1": p["latency_ms_b1"],
             "throughput_seq_s_b32": p["throughput_b32"], "train_seconds": p["train_seconds"],
             "peak_memory_mb": p["peak_memory_mb"]} for p in points]
    record = {"experiment": "demo", "command": "python benchmarks/bench_demo.py" + (" --quick" if args.quick else ""),
              "equivalent": "make demo", "data": "bundled synthetic NER (sparseft.demo.toy_ner): 800 train / 200 dev",
              "wall_seconds": wall, "budget_seconds": 300, "within_budget": wall <= 300, "smoke": args.quick or args.model != "minilm",
              "env": describe_environment(), "rows": rows, "report": str(OUT.relative_to(ROOT) / "report.md")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = RESULTS / f"demo-{stamp}.json"
    write_json(path, record)
    print(f"wall {wall:.0f} s; wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run benchmark experiments; one JSON record per run in benchmarks/results/.

Usage:
    python benchmarks/run.py list
    python benchmarks/run.py all | NAME [NAME ...]

An experiment is a recipe plus overrides (experiments.py). Each one runs in a fresh process
(`--one NAME`) so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import write_json  # noqa: E402
from experiments import EXPERIMENTS  # noqa: E402


def run_one(name: str) -> dict:
    from sparseft.config.recipe import load_recipe
    from sparseft.pipeline import run as run_recipe

    exp = EXPERIMENTS[name]
    missing = [p for p in exp.get("needs", []) if not (ROOT / p).exists()]
    if missing:
        print(f"skip {name}: missing data {missing}")
        return {}
    recipe = load_recipe(ROOT / exp["recipe"], exp.get("overrides", []))
    t0 = time.perf_counter()
    ctx = run_recipe(recipe)
    record = {
        "experiment": name,
        "description": exp.get("description", ""),
        "command": f"python benchmarks/run.py {name}",
        "equivalent": f"sparseft run {exp['recipe']} " + " ".join(exp.get("overrides", [])),
        "wall_seconds": time.perf_counter() - t0,
        "env": ctx.report.env,
        "stages": ctx.report.sections,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = RESULTS / f"{name}-{stamp}.json"
    write_json(path, record)
    print(f"wrote {path.relative_to(ROOT)}")
    return record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", help="experiment names, 'all' or 'list'")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.chdir(ROOT)
    if args.names == ["list"]:
        for name, exp in EXPERIMENTS.items():
            print(f"{name:28s} {exp.get('description', '')}")
        return 0
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"unknown experiment(s) {unknown}; see `python benchmarks/run.py list`", file=sys.stderr)
        return 2
    if args.one:
        run_one(names[0])
        return 0
    failed = 0
    for name in names:
        rc = subprocess.call([sys.executable, __file__, "--one", name])
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

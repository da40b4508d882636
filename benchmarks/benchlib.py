"""What the benchmark drivers share: the process setup, one child process per row, the record.

Every driver runs each row in a fresh process (its peak memory and its import state are its own)
and writes one JSON record under benchmarks/results/ (smoke runs: under benchmarks/runs/). The
pieces they all repeated live here, so a fix lands once:

  prepare(root)                    offline hub, quiet tokenizers, cwd = the repository root
  utc_stamp()                      the record's UTC stamp (also its file name's)
  run_parts(parts, run_part, args) parts in order; the number of rows that failed -> exit status
  result_child(script, argv, row)  a `run --one ROW` child that prints `RESULT {json}`; error row if it fails
  run_grid(...)                    a (key, learning rate) grid, one child each, rows from row.json
  best_by(rows, key, metric)       the best row per key (a sweep's chosen value)
  write_json(path, obj)            JSON with a trailing newline, parents created
  median_seconds(fn, repeats)      the median of timed calls (after optional warm-up calls)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence


def prepare(root: Path) -> None:
    """Benchmarks never reach the Hub (HF_HUB_OFFLINE) and run from the repository root, so the
    relative data and run paths in their commands mean the same thing from any cwd."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.chdir(root)


def utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")


def write_json(path: Path, obj) -> Path:
    """Write a benchmark record (indented JSON) atomically, creating its folder."""
    from sparseft.utils.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
    return path


def run_parts(parts: Iterable[str], run_part: Callable, args) -> int:
    """Run each part (`run_part(part, args)` returns its record's path, or None when it wrote none)
    and count the rows with an `error` across the records: the driver's exit status is 1 if any."""
    failed = 0
    for part in parts:
        path = run_part(part, args)
        if path is not None:
            failed += sum("error" in r for r in json.loads(Path(path).read_text())["rows"])
    return 1 if failed else 0


def result_child(script: str, argv: Sequence[str], row: str, **extra) -> dict:
    """Run `python SCRIPT *argv` (a child that prints `RESULT {json}` as its last result line) and
    return that row, or `{"row": row, "error": <the child's last stderr line>}` when it failed;
    `wall_seconds` and `extra` are added either way."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    record = json.loads(lines[-1][7:]) if proc.returncode == 0 and lines else {
        "row": row, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    record.update(wall_seconds=time.perf_counter() - t0, **extra)
    return record


def run_grid(script: str, keys: Iterable[str], values_for: Callable[[str], Sequence[float]], run_root: Path,
             child_flags: Sequence[str], key_field: str = "method") -> list[dict]:
    """One child per (key, lr): `python SCRIPT --child KEY LR RUN_DIR *child_flags`, where the child
    writes RUN_DIR/row.json. Rows come back in grid order; a failed child gives
    `{key_field: key, "lr": lr, "error": exit status}` and the grid goes on."""
    rows = []
    for key in keys:
        for lr in values_for(key):
            out = run_root / f"{key}-lr{lr:g}"
            rc = subprocess.call([sys.executable, script, "--child", key, repr(lr), str(out), *child_flags])
            row = json.loads((out / "row.json").read_text()) if rc == 0 else {key_field: key, "lr": lr, "error": rc}
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
    return rows


def best_by(rows: Iterable[dict], key_field: str, metric: str, minimize: bool = False) -> dict:
    """{key: {"lr", metric}} of the best row per key; rows without the metric (failed) are skipped;
    ties keep the first row in grid order."""
    best: dict[str, dict] = {}
    for row in rows:
        value = row.get(metric)
        if value is None:
            continue
        held = best.get(row[key_field])
        if held is None or (value < held[metric] if minimize else value > held[metric]):
            best[row[key_field]] = {"lr": row["lr"], metric: value}
    return best


def write_records(results: Path, name: str, env: dict, records: list[dict], markdown: str) -> Path:
    """`<results>/<name>-<stamp>.json` ({"env", "records"}) and the same table as .md beside it."""
    path = write_json(results / f"{name}-{utc_stamp()}.json", {"env": env, "records": records})
    path.with_suffix(".md").write_text(markdown)
    return path


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Median wall seconds of `repeats` calls of `fn` after `warmup` untimed ones (CPU timings:
    a GPU caller synchronizes inside `fn`)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# the shared data files, relative to the repository root (benchmarks run with cwd = root)
CONLL_DEV = "../shared/data/conll2003/eng.testa"
CONLL_TRAIN = "../shared/data/conll2003/eng.train"
WIKI = "../shared/data/wikitext2/wiki.valid.tokens"


def add_model_eval_args(p, *, calib_samples_help: str, conll_train_help: str, calib_windows_help: str) -> None:
    """The data flags bench_precision.py and bench_quant.py share (same names, defaults and help):
    CoNLL dev/train files and limits, the SmolLM2 WikiText-2 windows (timing: add_timing_args)."""
    p.add_argument("--eval-limit", type=int, help="CoNLL dev: only the first N sentences")
    p.add_argument("--calib-samples", type=int, default=128, help=calib_samples_help)
    p.add_argument("--conll-dev", default=CONLL_DEV, help="CoNLL dev file")
    p.add_argument("--conll-train", default=CONLL_TRAIN, help=conll_train_help)
    p.add_argument("--lm-model", default="smollm2", help="decoder of the smollm2 part (alias or folder)")
    p.add_argument("--wiki", default=WIKI, help="WikiText-2 file (wiki.valid.tokens)")
    p.add_argument("--windows", type=int, default=48, help="WikiText-2 eval windows")
    p.add_argument("--calib-windows", type=int, default=32, help=calib_windows_help)
    p.add_argument("--window-len", type=int, default=512, help="tokens per window")


def add_timing_args(p) -> None:
    """Timing flags shared by the benchmarks that time models in process."""
    p.add_argument("--seq-len", type=int, default=64, help="timing sequence length")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")

"""Full-data headline rows (issue 16 item 3): MiniLM on CoNLL-2003 and BANKING77, every method with
the shipped defaults, each row one `sparseft train` command.

Rows per task (ids: `<task>:full`, `<task>:sft:<mask>:<budget>`, `<task>:lora:<budget>`):
  full                      full fine-tuning
  sft:<mask>:0.01           sparse fine-tuning, density 1%           (every registered mask method)
  sft:<mask>:r8             sparse fine-tuning at LoRA-r8's count    (--match-lora-rank 8)
  lora:r8 / lora:0.01       LoRA rank 8 / the rank whose count is closest to 1% (--lora-rank-for-density)
  sft:fisher:r3, sft:lottery:r3   sparse fine-tuning at exactly lora:0.01's count: on MiniLM the rank
                            closest to 1% is 3, whose count (124,416 LoRA weights) is 17% above 1%
                            (106,168 entries), so `sft:<mask>:0.01` against `lora:0.01` gives
                            LoRA the larger budget; `r3` is the equal-count comparison
No learning rate, schedule or mask option is given: each row runs with its method's defaults
(sparseft/train/defaults.py, chosen by benchmarks/sweep_defaults.py on a held-out slice of train).
Nothing is selected on dev: `--eval-every never` (no best-checkpoint choice), dev is scored once,
after training.

Data (all of it):
  conll    train = eng.train (14,041 sentences), dev = eng.testa (3,250); 3 epochs (the default)
  banking  train.csv minus a seeded 10% slice (split_seed 0: 9,003 records), scored on that slice
           (1,000; the task has no separate dev file); 5 epochs (77 classes need more steps than
           the 3-epoch default; stated here, not tuned on the slice)

    python benchmarks/bench_headline.py --list
    python benchmarks/bench_headline.py --only 'conll:full' 'conll:sft:fisher:0.01' 'conll:lora:*'
    python benchmarks/bench_headline.py --only 'conll:*' --reuse benchmarks/results/headline_conll-<stamp>.json
    python benchmarks/bench_headline.py --smoke --only 'conll:sft:fisher:0.01'   # seconds, not a result
    python benchmarks/bench_headline.py --only 'conll:sft:*:r3' 'conll:lora:0.01' --record-name equal_count
    python benchmarks/bench_headline.py --only conll:full --record-name equal_count \
        --reuse benchmarks/results/headline_conll_equal_count-<stamp>.json     # add a row to a side record
    python benchmarks/bench_headline.py --only 'banking:*:0.01' banking:full --record-name seed1 --seed 1

Each row runs as its own process (its peak RSS is its own). The record
benchmarks/results/headline_<task>-<stamp>.json is rewritten after every row (rows so far,
`complete: false` until every selected row ran); `--reuse` starts from a stopped record's rows.
Run folders: benchmarks/runs/headline/<row>/ (this script's own; a stopped row resumes from its
last checkpoint when the run is the same, and fails loudly when it is not); smoke runs and records
go under benchmarks/runs/headline/smoke/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs" / "headline"
MASKS = ("fisher", "magnitude", "spiel_ag", "spiel_ma", "random", "lottery", "regrow")
TASK_ARGS = {
    "conll": ["--task", "ner", "--train", "../shared/data/conll2003/eng.train",
              "--eval", "../shared/data/conll2003/eng.testa", "--max-length", "128", "--epochs", "3"],
    "banking": ["--task", "cls", "--train", "../shared/data/banking77/train.csv", "--text-col", "text",
                "--label-col", "category", "--eval-fraction", "0.1", "--max-length", "64", "--epochs", "5"],
}
METRIC = {"conll": "f1", "banking": "accuracy"}
LORA_1PCT_RANK = "r3"  # the rank `--lora-rank-for-density 0.01` picks on MiniLM (both tasks)


def rows_of(task: str) -> list[str]:
    """In the order they are worth running: the comparisons the targets need first."""
    first = [f"{task}:full", f"{task}:sft:fisher:0.01", f"{task}:lora:0.01", f"{task}:sft:fisher:r8", f"{task}:lora:r8"]
    rest = [f"{task}:sft:{m}:{b}" for b in ("0.01", "r8") for m in MASKS]
    equal_count = [f"{task}:sft:{m}:{LORA_1PCT_RANK}" for m in ("fisher", "lottery")]
    return first + [r for r in rest if r not in first] + equal_count


def method_args(row: str) -> list[str]:
    _, kind, *rest = row.split(":")
    if kind == "full":
        return ["--method", "train"]
    if kind == "lora":
        budget = rest[0]
        return ["--method", "lora"] + (["--lora-rank", budget[1:]] if budget.startswith("r")
                                       else ["--lora-rank-for-density", budget])
    mask, budget = rest
    return ["--method", "sft", "--mask", mask] + (["--match-lora-rank", budget[1:]] if budget.startswith("r")
                                                  else ["--density", budget])


def run_dir(row: str, smoke: bool, group: str = "") -> Path:
    """A smoke run never shares a folder with the real row (its checkpoint would be refused as a
    different run when the real one starts: resume checks the run's identity); a `--record-name`
    group gets its own folders, so it never overwrites the artifacts behind the main record's rows."""
    return RUNS / ("smoke" if smoke else "") / group / row.replace(":", "_")


def command_for(row: str, smoke: bool, group: str = "", seed: int | None = None) -> list[str]:
    task = row.split(":")[0]
    out = run_dir(row, smoke, group)
    cmd = ["sparseft", "train", *TASK_ARGS[task], *method_args(row), "--eval-every", "never", "--no-progress",
           "--no-cost", "-o", str(out.relative_to(ROOT)), "--overwrite"]
    if seed is not None:  # another seed (data order, dropout, new heads); sparseft's default is 42
        cmd += ["--seed", str(seed)]
    if smoke:
        # banking's file is sorted by label: a 64-record head would hold one class
        cmd += (["--train-limit", "64"] if task == "conll" else []) + ["--eval-limit", "64", "--max-steps", "3"]
    return cmd


def artifact_bytes(out: Path, kind: str) -> int:
    pattern = {"full": "model/model.safetensors", "sft": "**/diff/*", "lora": "**/adapter/*"}[kind]
    return sum(p.stat().st_size for p in out.glob(pattern) if p.is_file())


def run_row(row: str, smoke: bool, group: str = "", seed: int | None = None) -> dict:
    task, kind = row.split(":")[:2]
    out = run_dir(row, smoke, group)
    cmd = command_for(row, smoke, group, seed)
    exe = str(Path(sys.executable).with_name("sparseft"))
    t0 = time.perf_counter()
    proc = subprocess.run([exe, *cmd[1:]], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    record = {"row": row, "command": shlex.join(cmd), "wall_seconds": wall}
    if proc.returncode != 0:
        return record | {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    stages = json.loads((out / "metrics.json").read_text())["stages"]
    fin, dev = stages["finetune"], stages["dev"]
    recipe = yaml.safe_load((out / "recipe.yaml").read_text()) if (out / "recipe.yaml").exists() else {}
    stage = next((s for s in recipe.get("stages", []) if s.get("name") == "finetune"), {})
    record.update(score=dev[METRIC[task]], metric=METRIC[task], trainable=fin.get("trainable_params"),
                  lr=stage.get("lr"), epochs=stage.get("epochs"), steps=fin.get("steps"),
                  train_seconds=fin.get("train_seconds"), seconds_per_step=fin.get("seconds_per_step"),
                  peak_memory_mb=fin.get("peak_memory_mb"), artifact_mb=artifact_bytes(out, kind) / 2**20,
                  train_examples=stages.get("load", {}).get("train_examples"),
                  eval_examples=stages.get("load", {}).get("eval_examples"))
    for key in ("rank", "alpha", "selected", "dense_part_params"):
        if key in fin:
            record[key] = fin[key]
    return record


def record_name(task: str, side: str = "") -> str:
    """headline_<task>, or the side record headline_<task>_<side> (--record-name)."""
    return f"headline_{task}" + (f"_{side}" if side else "")


def with_pct_of_dense(rows: list[dict]) -> list[dict]:
    """artifact_pct_of_dense: each artifact's size as % of the full row's model.safetensors."""
    dense = next((r.get("artifact_mb") for r in rows if r["row"].endswith(":full")), None)
    return [r | {"artifact_pct_of_dense": 100 * r["artifact_mb"] / dense} if dense and "artifact_mb" in r else r
            for r in rows]


def targets(task: str, rows: list[dict]) -> dict:
    """The issue's comparisons, in points (F1 or accuracy x 100), from the rows present."""
    score = {r["row"]: r["score"] for r in rows if "score" in r}
    out = {}

    def diff(a: str, b: str, label: str) -> None:
        if f"{task}:{a}" in score and f"{task}:{b}" in score:
            out[label] = round(100 * (score[f"{task}:{a}"] - score[f"{task}:{b}"]), 2)

    def best_sft(budget: str) -> str | None:
        """The best-scoring mask method at this budget (not a default: the mask is chosen on dev
        here, so these lines describe the methods and are not target checks)."""
        done = [r for r in score if r.startswith(f"{task}:sft:") and r.endswith(f":{budget}")]
        return max(done, key=score.get).split(":")[2] if done else None

    diff("sft:fisher:0.01", "full", "sft fisher 1% minus full (points; target >= -1.0)")
    if (best := best_sft("0.01")) and best != "fisher":   # fisher's own lines follow
        diff(f"sft:{best}:0.01", "full", f"best sft 1% ({best}) minus full (points)")
        diff(f"sft:{best}:0.01", "lora:0.01", f"best sft 1% ({best}) minus LoRA at the 1% count (points)")
    diff("sft:fisher:0.01", "lora:0.01", "sft fisher 1% minus LoRA at the 1% count (points; target >= 0)")
    diff(f"sft:fisher:{LORA_1PCT_RANK}", "lora:0.01",
         f"sft fisher at LoRA-1%'s exact count ({LORA_1PCT_RANK}) minus LoRA at the 1% count (points)")
    diff(f"sft:lottery:{LORA_1PCT_RANK}", "lora:0.01",
         f"sft lottery at LoRA-1%'s exact count ({LORA_1PCT_RANK}) minus LoRA at the 1% count (points)")
    diff("sft:fisher:r8", "lora:r8", "sft fisher at LoRA-r8's count minus LoRA r8 (points; target >= 0)")
    if (best := best_sft("r8")) and best != "fisher":
        diff(f"sft:{best}:r8", "lora:r8", f"best sft at LoRA-r8's count ({best}) minus LoRA r8 (points)")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=["*"], help="row ids or shell patterns (default: every row)")
    p.add_argument("--list", action="store_true", help="print the row ids and their commands, run nothing")
    p.add_argument("--reuse", type=Path, help="a stopped headline_<task> record (with --record-name NAME: a "
                   "headline_<task>_NAME one): keep its rows not re-run now")
    p.add_argument("--smoke", action="store_true", help="64 examples, 3 steps: checks the plumbing only")
    p.add_argument("--record-name", default="", help="a side record headline_<task>_<NAME> (its own BENCHMARKS.md "
                   "section and run folders benchmarks/runs/headline/<NAME>/): rows re-measured on another "
                   "machine beside new ones, without mixing machines in the main record")
    p.add_argument("--seed", type=int, help="run the rows with this seed instead of sparseft's default (42); "
                   "needs --record-name, so the runs get folders and a record of their own")
    args = p.parse_args()
    if args.seed is not None and not args.record_name:
        p.error("--seed needs --record-name (a side record and folders of its own for the other seed)")
    if args.record_name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.record_name):
        p.error(f"--record-name {args.record_name!r}: letters, digits, '_', '.', '-' only (it names a file and a folder)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    selected = {t: [r for r in rows_of(t) if any(fnmatch.fnmatch(r, pat) for pat in args.only)] for t in TASK_ARGS}
    if args.list or not any(selected.values()):
        listed = [r for t in TASK_ARGS for r in selected[t]] or [r for t in TASK_ARGS for r in rows_of(t)]
        for r in listed:
            print(f"{r}\n    {shlex.join(command_for(r, args.smoke, args.record_name, args.seed))}")
        return 0 if args.list else 2
    reused = json.loads(args.reuse.read_text()) if args.reuse else None
    from sparseft.utils.env import describe_environment
    from sparseft.utils.hardware import detect
    from benchlib import write_json

    env, hardware = describe_environment(), detect().to_dict()
    failed = False
    for task, todo in selected.items():
        if not todo:
            continue
        name = record_name(task, args.record_name)
        if reused and reused.get("experiment") != name:
            print(f"--reuse {args.reuse}: a record of {reused.get('experiment')!r}, not {name}", file=sys.stderr)
            return 2
        old = [r for r in (reused or {}).get("rows", []) if r["row"] not in todo]
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        dest = (RUNS / "smoke") if args.smoke else RESULTS
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / f"{name}-{stamp}.json"
        done: list[dict] = []
        for row in todo:
            rec = run_row(row, args.smoke, args.record_name, args.seed)
            failed |= "error" in rec
            done.append(rec)
            print(json.dumps(rec), flush=True)
            rows = with_pct_of_dense(sorted(old + done, key=lambda r: rows_of(task).index(r["row"])))
            record = {"experiment": name, "date": stamp, "env": env, "hardware": hardware,
                      "command": "python benchmarks/bench_headline.py " + shlex.join(sys.argv[1:]),
                      "data_subset": "no subset: the whole training set (split: bench_headline.py's docstring)",
                      "smoke": args.smoke, "seed": 42 if args.seed is None else args.seed,
                      "complete": len(done) == len(todo) and not any("error" in r for r in rows), "runs_done": len(old) + len(done),
                      "runs_planned": len(old) + len(todo), "rows": rows, "targets": targets(task, rows)}
            if reused:
                record["reused_from"] = str(args.reuse)
            write_json(path, record)
        print(f"wrote {path.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

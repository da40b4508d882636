"""Turn finished `sparseft run` folders into one benchmark record (a BENCHMARKS.md table).

Selection runs made by hand with `sparseft run RECIPE key=value ...` (the held-out sweeps of
docs/pruning.md, for one) keep their numbers only in their folders' metrics.json. This reads each
folder's metrics.json and resolved recipe.yaml, and writes one row per folder:

  run, train_examples, steps, <every setting some row overrides, each row's value>, start_f1 (the first eval stage, when the
  recipe has two: the starting model's score), f1 (the last eval stage), delta_f1, seconds_per_step,
  date, commit,
  and the command that reproduces the run (`sparseft run RECIPE` + the overrides that differ
  from RECIPE, found by comparing the resolved recipe with it; stages are matched by name).

    python benchmarks/collect_runs.py prune_heldout_recovery --recipe recipes/minilm_conll2003_prune_gradual.yaml \\
        --description "..." benchmarks/runs/heldout_prune90/lr* \
        benchmarks/runs/heldout_prune90/teacher@recipes/minilm_conll2003_full.yaml

FOLDER@RECIPE names another starting recipe for that folder.
Nothing is rerun or rescored: the numbers are the folders'. A folder without metrics.json (an
unfinished run) is an error naming it. Record: benchmarks/results/<name>-<UTC stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import prepare, utc_stamp, write_json  # noqa: E402

SKIP = {"output_dir"}  # differs by construction; the command names its own folder


def _flat(recipe: dict) -> dict[str, object]:
    """`key.sub=value` for every leaf; stages keyed by name, as `sparseft run` overrides address them."""
    out: dict[str, object] = {}

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), sub)
        else:
            out[prefix] = v

    for key, value in recipe.items():
        if key == "stages":
            for stage in value:
                walk(f"stages.{stage['name']}", {k: v for k, v in stage.items() if k != "name"})
        else:
            walk(key, value)
    return out


def _text(v) -> str:
    return "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))


def overrides(base: dict, resolved: dict) -> dict[str, object]:
    """The `key=value` overrides that turn `base` into `resolved` (keys in resolved order)."""
    b, r = _flat(base), _flat(resolved)
    return {k: v for k, v in r.items() if k not in SKIP and _text(b.get(k)) != _text(v)}


def row(folder: Path, recipe_path: Path, base: dict) -> dict:
    import yaml

    metrics_file, recipe_file = folder / "metrics.json", folder / "recipe.yaml"
    for f in (metrics_file, recipe_file):
        if not f.is_file():
            raise SystemExit(f"{f}: missing (an unfinished or foreign run folder)")
    metrics = json.loads(metrics_file.read_text())
    resolved = yaml.safe_load(recipe_file.read_text())
    changed = overrides(base, resolved)
    stages = metrics["stages"]
    evals = [s for s in metrics["stage_order"] if stages.get(s, {}).get("method") == "eval" and "f1" in stages[s]]
    trained = [s for s in metrics["stage_order"] if "steps" in stages.get(s, {})]
    if not evals:
        raise SystemExit(f"{metrics_file}: no eval stage with an f1")
    first, last = stages[evals[0]]["f1"], stages[evals[-1]]["f1"]
    train = stages[trained[-1]] if trained else {}
    out = {"run": folder.name, "train_examples": stages.get("load", {}).get("train_examples"),
           "steps": train.get("steps")}
    out["_settings"] = (_flat(resolved), list(changed))   # filled in across rows by fill_columns()
    if len(evals) > 1:
        out["start_f1"] = first
    out["f1"] = last
    if len(evals) > 1:
        out["delta_f1"] = last - first
    out.update({"seconds_per_step": train.get("seconds_per_step"), "date": metrics["env"].get("date"),
                "commit": str(metrics["env"].get("commit"))[:10] + (" (dirty)" if metrics["env"].get("dirty") else ""),
                "command": shlex.join(["sparseft", "run", str(recipe_path)]
                                      + [f"{k}={_text(v)}" for k, v in changed.items()]
                                      + [f"output_dir={resolved.get('output_dir', folder)}"])})
    return out


def _column(key: str) -> str:
    return key.rsplit(".", 1)[-1] if key.startswith("stages.") else key


def fill_columns(rows: list[dict]) -> list[dict]:
    """One column per setting any row overrides, filled in every row from its resolved recipe (a
    row at the recipe's value shows that value rather than a blank), placed after `steps`."""
    columns = list(dict.fromkeys(_column(k) for r in rows for k in r["_settings"][1]))
    out = []
    for r in rows:
        flat, _ = r["_settings"]
        head = {k: v for k, v in r.items() if k in ("run", "train_examples", "steps")}
        tail = {k: v for k, v in r.items() if k not in head and k != "_settings"}
        out.append(head | {c: _value(flat, c) for c in columns} | tail)
    return out


def _value(flat: dict, column: str):
    """A row's value for a column: the top-level key, or the first stage that sets the field (a
    recipe of another shape, such as the teacher's one-stage `finetune`, still shows its lr)."""
    if column in flat:
        return flat[column]
    return next((v for k, v in flat.items() if k.startswith("stages.") and k.rsplit(".", 1)[-1] == column
                 and v is not None), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the record's experiment name (its BENCHMARKS.md section)")
    p.add_argument("folders", nargs="+", help="finished `sparseft run` output folders (FOLDER@RECIPE: "
                                             "started from RECIPE instead of --recipe)")
    p.add_argument("--recipe", type=Path, required=True, help="the recipe the runs were started from")
    p.add_argument("--description", default="", help="what the runs are (shown above the table)")
    args = p.parse_args(argv)
    prepare(ROOT)
    import yaml

    rows = []
    for spec in args.folders:
        folder, _, recipe = spec.partition("@")
        recipe = Path(recipe) if recipe else args.recipe
        if not recipe.is_file():
            raise SystemExit(f"{recipe}: no such recipe")
        rows.append(row(Path(folder), recipe, yaml.safe_load(recipe.read_text())))
    rows = fill_columns(rows)
    first = json.loads((Path(args.folders[0].partition("@")[0]) / "metrics.json").read_text())
    record = {"experiment": args.name, "description": args.description,
              "command": shlex.join(["python", "benchmarks/collect_runs.py", *(argv if argv is not None else sys.argv[1:])]),
              "note": "collected from the run folders' metrics.json; each row keeps its own date and commit",
              "env": first["env"], "rows": rows}
    path = write_json(RESULTS / f"{args.name}-{utc_stamp()}.json", record)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

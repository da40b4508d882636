"""Pruning benchmarks: MiniLM on CoNLL-2003 dev, SmolLM2-135M perplexity on WikiText-2.

    python benchmarks/bench_prune.py                          # every part, in order
    python benchmarks/bench_prune.py --only teacher oneshot   # some parts
    python benchmarks/bench_prune.py --only lm --runs sparsegpt   # runs whose name contains ...
    python benchmarks/bench_prune.py --quick --only teacher oneshot --runs teacher 90_oneshot_kd
                                       # smoke test: tiny limits, results under benchmarks/runs/prune_quick

Parts (each a list of recipe runs; every run is `sparseft run <recipe> <overrides>` in its own
process, so its peak memory is its own):

  teacher     dense MiniLM fine-tuned on the fixed CoNLL subset (the teacher; other CoNLL parts need it)
  oneshot     magnitude (global) at 50/70/90%: F1 right after pruning and after 2 epochs of
              recovery fine-tuning with fixed masks, with and without distillation
  gradual     cubic-schedule pruning during 2 epochs of fine-tuning, +/- distillation: magnitude and
              movement (`--gradual-pruners`; a movement-only run gets its own record name;
              `--movement-regrow` / `--movement-prune-start` / `--movement-score adam` for hard
              movement with regrowth, a score warm-up and Adam-learned scores)
  nm          2:4 magnitude, then recovery fine-tuning, +/- distillation
  structured  FFN neurons + blocks physically removed at two sizes, KD fine-tuning, CPU speedup
  lm          SmolLM2-135M on WikiText-2: dense, and magnitude / Wanda / SparseGPT at 50%
              unstructured and 2:4 (the Wanda paper's table shape)

Full-data protocol (issue 16 item 4): `--full-train --teacher benchmarks/runs/headline/conll_full/model
--recovery-epochs 2` starts every CoNLL run from the full-data headline model (bench_headline.py's
`conll:full` row: all of eng.train, 3 epochs, shipped defaults) and distills from it. Training
stages never evaluate on dev (eval_every never): the final model is the one scored.

Data (stated in every record): CoNLL training = the first 2,000 sentences of eng.train in file
order (`--full-train`: all 14,041), dev = all 3,250 sentences of eng.testa. WikiText-2: 512-token
windows of wiki.valid.tokens; evaluation = the first 48 windows of the file's last 10%,
calibration = the first 128 windows of the other 90% (disjoint text; the papers' count; the first
protocol used 32: `--lm-calib-samples 32`, record prune_lm). One JSON record per part
goes to benchmarks/results/prune_<part>-<UTC stamp>.json (`--quick`: under the quick run folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib import CONLL_TRAIN, WIKI, prepare, run_parts, write_json  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"
PARTS = ("teacher", "oneshot", "gradual", "nm", "structured", "lm")
R = "recipes/"
STRUCTURED_SIZES = {   # name: structured pruner_args (MiniLM-L6: 6 blocks, FFN 1536)
    "ffn50_drop1": {"ffn_sparsity": 0.5, "drop_layers": [5], "importance": "activation"},
    "ffn75_drop1": {"ffn_sparsity": 0.75, "drop_layers": [5], "importance": "activation"},
    "ffn50_drop2": {"ffn_sparsity": 0.5, "drop_layers": [4, 5], "importance": "activation"},
    "ffn75_drop2": {"ffn_sparsity": 0.75, "drop_layers": [4, 5], "importance": "activation"},
}
GRADUAL_PRUNERS = ("magnitude", "movement")


def data_note(args) -> str:
    train = "all 14,041 sentences" if args.full_train else "first 2,000 sentences in file order"
    if args.quick:
        train = "first 40 sentences (quick smoke test)"
    teacher = f"; teacher = {teacher_path(args)}" if args.teacher else ""
    epochs = (f"; recovery / pruning fine-tuning: {args.recovery_epochs} epochs" if args.recovery_epochs
              else "; recovery / pruning fine-tuning: the recipe's epochs (2)")
    return (f"CoNLL-2003: train = eng.train {train}{teacher}{epochs}; dev = eng.testa (3,250 sentences"
            f"{', first 24 only' if args.quick else ''}). WikiText-2: 512-token windows of "
            f"{args.lm_data or 'wiki.valid.tokens'}, "
            f"eval = first 48 windows of the last 10% of the file, calibration = first "
            f"{args.lm_calib_samples} windows of the rest")


def teacher_path(args) -> str:
    """The dense fine-tuned model every CoNLL pruning run starts from and distills from: the teacher
    part's, or `--teacher` (e.g. the full-data headline row's model, benchmarks/bench_headline.py)."""
    return args.teacher or f"{run_dir(args)}/conll_teacher/model"


def fine_prune_start(pruner: str, args) -> list[str]:
    """Movement pruning starts from the *pretrained* model and fine-tunes while pruning, distilling
    from the teacher (Sanh et al. 2020's fine-pruning). Started from the already fine-tuned teacher
    its scores -sum(grad * W) are gradient noise times |W|, and the lowest ones are mostly large
    weights (record prune_gradual_movement_fulltrain-20261202T012539: F1 0 at 50-90%).
    Overrides: the pretrained start, the teacher, the full fine-tuning lr and the teacher's epochs."""
    if pruner != "movement" or args.movement_start != "pretrained":
        return []
    from sparseft.train.defaults import DEFAULT_LR

    return [f"model={args.pretrained}", f"stages.gradual.teacher={teacher_path(args)}",
            f"stages.gradual.lr={DEFAULT_LR['train']}", f"stages.gradual.epochs={args.fine_prune_epochs}"]


def movement_options(pruner: str, args) -> tuple[str, list[str], dict]:
    """Run-name suffix, overrides and record-row fields of the movement-only options:
    `--movement-regrow` (pruned weights can return, Sanh et al.'s hard movement) and
    `--movement-prune-start` (a score warm-up: the fraction of the steps trained before the first
    pruning event) and `--movement-score adam` (Sanh et al.'s Adam-learned scores)."""
    if pruner != "movement":
        return "", [], {}
    suffix, out = "", []
    if args.movement_regrow:
        suffix += "_regrow"
        out.append("stages.gradual.regrow=true")
    if args.movement_prune_start:
        suffix += f"_warm{int(round(args.movement_prune_start * 100))}"
        out.append(f"stages.gradual.prune_start={args.movement_prune_start}")
    if args.movement_score != "sum":
        suffix += f"_{args.movement_score}"
        out.append("stages.gradual.pruner_args=" + json.dumps({"allocation": "global", "score": args.movement_score}))
    return suffix, out, {"regrow": args.movement_regrow, "prune_start": args.movement_prune_start,
                         "score": args.movement_score}


def run_dir(args) -> str:
    return "benchmarks/runs/prune" + ("_quick" if args.quick else "_full" if args.full_train else "")


def experiment(part: str, args) -> str:
    """Record name: variants of the fixed protocol get their own BENCHMARKS.md section."""
    name = f"prune_{part}"
    if part == "gradual" and list(args.gradual_pruners) == ["movement"]:
        name += "_movement"   # its own record beside the magnitude rows (BENCHMARKS.md shows the newest per name)
    if args.full_train and part != "lm":
        name += "_fulltrain"
    if part not in ("lm", "teacher"):
        name += rec_suffix(args)   # a longer recovery is its own protocol, beside the 2-epoch rows
    fine_prune_only = part == "gradual" and all(fine_prune_start(p, args) for p in args.gradual_pruners)
    if args.recovery_lr is not None and part not in ("lm", "teacher") and not fine_prune_only:
        name += lr_suffix(args)   # another recovery lr is its own protocol too (fine-pruning keeps its own lr)
    if part == "gradual" and "movement" in args.gradual_pruners:
        name += movement_options("movement", args)[0]   # _regrow / _warm33 / _adam variants: their own records
    if part == "lm" and args.lm_calib_samples != 32:
        name += f"_calib{args.lm_calib_samples}"
    if part == "lm" and args.lm_sequential:
        name += "_seq"
    if part == "lm" and args.lm_damp is not None:
        name += f"_damp{args.lm_damp:g}"
    return name + args.record_suffix


def lr_suffix(args) -> str:
    """`_lr<value>` of the run folders and records of a `--recovery-lr` run ('' without it)."""
    return "" if args.recovery_lr is None else f"_lr{args.recovery_lr:g}"


def rec_suffix(args) -> str:
    """`_rec<N>` of the run folders and records of a `--recovery-epochs N` run ('' for the 2-epoch protocol)."""
    return "" if args.recovery_epochs in (None, 2) else f"_rec{args.recovery_epochs}"


def conll_common(args, name: str, *, teacher_model: bool = True, recovery: bool = True) -> list[str]:
    """Overrides every CoNLL run gets: its output folder, the subset, the teacher path, quick limits.
    The folder carries `--recovery-epochs`' suffix on every run but the teacher's (they all train for
    that many epochs) and `--recovery-lr`'s on the recovery runs (those that train from the teacher at
    that lr), so a run under another protocol never meets this one's checkpoint."""
    base = run_dir(args)
    out = [f"output_dir={base}/{name}{rec_suffix(args) if teacher_model else ''}"
           f"{lr_suffix(args) if teacher_model and recovery else ''}"]
    if teacher_model:
        out.append(f"model={teacher_path(args)}")
    if args.full_train:
        out.append("data.train_limit=null")
    if args.quick:
        out += ["data.train_limit=40", "data.eval_limit=24"]
    return out


def train_stage_overrides(args, stage: str, extra: dict | None = None) -> list[str]:
    """Per-stage overrides of a training stage: no evaluation during training (the final model is the
    one scored: no checkpoint is chosen on dev), the stated recovery epochs, the quick limits."""
    epochs = [f"stages.{stage}.eval_every=never"]
    if args.recovery_epochs and stage != "finetune":
        epochs.append(f"stages.{stage}.epochs={args.recovery_epochs}")
    if args.recovery_lr is not None and stage != "finetune":
        epochs.append(f"stages.{stage}.lr={args.recovery_lr}")   # fine-pruning from pretrained sets its own
    if not args.quick:
        return epochs
    return epochs + [f"stages.{stage}.max_steps=3", f"stages.{stage}.batch_size=8"] + \
        [f"stages.{stage}.{k}={v}" for k, v in (extra or {}).items()]


def plan(part: str, args) -> list[dict]:
    """The runs of one part: {name, recipe, overrides, row (labels for the summary)}."""
    runs: list[dict] = []
    base = run_dir(args)
    if part == "teacher":
        runs.append({"name": "conll_teacher", "recipe": R + "minilm_conll2003_prune_teacher.yaml",
                     "overrides": conll_common(args, "conll_teacher", teacher_model=False)
                     + train_stage_overrides(args, "finetune") + (["stages.dev.repeats=1"] if args.quick else []),
                     "row": {"model": "dense"}})
    elif part in ("oneshot", "nm"):
        settings = ([("magnitude", {"sparsity": s, "allocation": "global"}, s) for s in args.sparsities]
                    if part == "oneshot" else [("nm", {"n": 2, "m": 4}, 0.5)])
        for pruner, pargs, sparsity in settings:
            for kd in (False, True):
                label = f"{pruner}_{int(round(sparsity * 100))}" if part == "oneshot" else "nm_2of4"
                name = f"conll_{label}_oneshot_{'kd' if kd else 'nokd'}"
                pa = json.dumps(pargs)
                runs.append({"name": name, "recipe": R + "minilm_conll2003_prune_oneshot.yaml",
                             "overrides": conll_common(args, name) + [
                                 f"stages.prune.pruner={pruner}", f"stages.prune.pruner_args={pa}",
                                 f"stages.recover.pruner={pruner}", f"stages.recover.pruner_args={pa}",
                                 f"stages.recover.distill={str(kd).lower()}",
                                 f"stages.recover.teacher={teacher_path(args)}"]
                             + train_stage_overrides(args, "recover") + (["stages.dense.repeats=1"] if args.quick else []),
                             "row": {"pruner": pruner, "pattern": "2:4" if pruner == "nm" else "unstructured",
                                     "sparsity": sparsity, "schedule": "oneshot", "distill": kd}})
    elif part == "gradual":
        for pruner in args.gradual_pruners:
            for sparsity in args.sparsities:
                for kd in (False, True):
                    name = f"conll_{pruner}_{int(round(sparsity * 100))}_gradual_{'kd' if kd else 'nokd'}"
                    start = fine_prune_start(pruner, args)
                    if start:
                        name += "_from_pretrained"
                    suffix, movement, movement_row = movement_options(pruner, args)
                    name += suffix
                    runs.append({"name": name, "recipe": R + "minilm_conll2003_prune_gradual.yaml",
                                 "overrides": conll_common(args, name, recovery=not start) + [
                                     f"stages.gradual.pruner={pruner}",
                                     f"stages.gradual.final_sparsity={sparsity}",
                                     f"stages.gradual.distill={str(kd).lower()}"]
                                 + train_stage_overrides(args, "gradual", {"prune_every": 1}) + start + movement,
                                 "row": {"pruner": pruner, "pattern": "unstructured", "sparsity": sparsity,
                                         "schedule": "cubic", "distill": kd,
                                         "start": "pretrained" if start else "teacher", **movement_row}})
    elif part == "structured":
        for size, pargs in STRUCTURED_SIZES.items():
            name = f"conll_structured_{size}"
            runs.append({"name": name, "recipe": R + "minilm_conll2003_prune_structured.yaml",
                         "overrides": conll_common(args, name) + [
                             f"stages.shrink.pruner_args={json.dumps(pargs)}"]
                         + train_stage_overrides(args, "shrink", {"repeats": 2, "calib_samples": 8}),
                         "row": {"pruner": "structured", "size": size, **pargs, "distill": True}})
    elif part == "lm":
        settings = [("dense", "magnitude", {"sparsity": 0.0})]
        for pattern in ("unstructured", "2:4"):
            for pruner in ("magnitude", "wanda", "sparsegpt"):
                if pruner == "magnitude":
                    name, pargs = (("nm", {"n": 2, "m": 4}) if pattern == "2:4"
                                   else ("magnitude", {"sparsity": 0.5, "allocation": "per_row"}))
                else:
                    name, pargs = pruner, {"sparsity": 0.5, "pattern": pattern}
                    if args.lm_sequential:
                        pargs["sequential"] = True
                    if args.lm_damp is not None and pruner == "sparsegpt":
                        pargs["damp"] = args.lm_damp
                settings.append((f"{pruner}_{pattern.replace(':', 'of')}", name, pargs))
        calib = args.lm_calib_samples
        for label, pruner, pargs in settings:
            name = (f"smollm2_{label}" + (f"_calib{calib}" if calib != 32 else "")
                    + ("_seq" if args.lm_sequential and pruner != "magnitude" and pruner != "nm" else "")
                    + (f"_damp{pargs['damp']:g}" if "damp" in pargs else "")
                    + args.record_suffix)   # its own output folder too
            over = [f"output_dir={base}/{name}", f"stages.prune.pruner={pruner}",
                    f"stages.prune.pruner_args={json.dumps(pargs)}", f"model={args.lm_model}"]
            if args.lm_data:
                over.append(f"data.train={args.lm_data}")
            over.append(f"stages.prune.calib_samples={calib}")
            if args.quick:
                over += ["data.block_size=64", "data.eval_limit=2", "stages.prune.calib_samples=2"]
            runs.append({"name": name, "recipe": R + "smollm2_wikitext2_prune.yaml", "overrides": over,
                         "row": {"pruner": label.split("_")[0], "pattern": "2:4" if "2of4" in label
                                 else "unstructured", "sparsity": pargs.get("sparsity", 0.5),
                                 **({"damp": pargs["damp"]} if "damp" in pargs else {})}})
    return runs


def selection_file(source: Path = ROOT / WIKI, folder: Path = ROOT / "benchmarks" / "runs" / "lm_selection") -> str:
    """The held-out selection text: the first 90% (int(0.9 * n)) of the lines of wiki.valid.tokens,
    written once into this script's own folder. The lm part evaluates on the last 10% of whatever
    file it gets, so options chosen here never see the reported windows (the last 10% of the full
    file). Returns the path relative to the repository root."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    out = folder / "wiki.valid.head90.tokens"
    text = "".join(lines[: int(0.9 * len(lines))])   # as the selection records were made
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        from sparseft.utils.io import atomic_write_text

        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    return str(out.relative_to(ROOT))


def needs(part: str, args) -> list[str]:
    if part == "lm":
        return [] if args.lm_data else [WIKI]
    need = [CONLL_TRAIN]
    if part != "teacher":
        need.append(f"{teacher_path(args)}/config.json")
    return need


# ---- running one recipe in a child process ---------------------------------------------------

def child(spec_path: str, out_path: str) -> int:
    """Run one recipe (this process only) and write its report sections + peak memory."""
    from sparseft.config.recipe import load_recipe
    from sparseft.pipeline import run as run_recipe

    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    ctx = run_recipe(load_recipe(ROOT / spec["recipe"], spec["overrides"]), print_report=False)
    result = {"stages": ctx.report.sections, "env": ctx.report.env, "wall_seconds": time.perf_counter() - t0,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(out_path).write_text(json.dumps(result, default=str))
    return 0


def run_in_child(spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        rc = subprocess.call([sys.executable, __file__, "--child", str(spec_file), str(out_file)], cwd=ROOT)
        if rc != 0 or not out_file.exists():
            return {"error": f"exit code {rc}"}
        return json.loads(out_file.read_text())


def teacher_f1(spec: dict) -> float | None:
    """Dev F1 of a fine-pruning run's teacher: the dev score in the metrics.json of the run that
    trained it (e.g. benchmarks/runs/headline/conll_full/metrics.json), None when absent."""
    teacher = next((o.split("=", 1)[1] for o in spec["overrides"] if o.startswith("stages.gradual.teacher=")), "")
    metrics = ROOT / teacher / ".." / "metrics.json"
    if not teacher or not metrics.exists():
        return None
    return json.loads(metrics.read_text())["stages"].get("dev", {}).get("f1")


def summarize(part: str, spec: dict, result: dict) -> dict:
    """One table row: the run's labels plus its headline numbers."""
    st = result.get("stages", {})
    row = {"run": spec["name"], **spec["row"], "wall_seconds": result.get("wall_seconds"),
           "peak_rss_mb": result.get("peak_rss_mb"),
           "equivalent": f"sparseft run {spec['recipe']} " + " ".join(shlex.quote(o) for o in spec["overrides"])}
    if "error" in result:
        return {**row, "error": result["error"]}
    if part == "lm":
        row.update(perplexity=st["ppl"]["perplexity"], eval_tokens=st["ppl"]["n_tokens"],
                   target_sparsity=st["prune"]["target_sparsity"], prune_seconds=st["prune"]["prune_seconds"])
        return row
    final = st.get("dev", {})
    row["f1"] = final.get("f1")
    if part == "teacher":
        row["cost"] = final.get("cost")
        return row
    row["f1_dense"] = st["dense"]["f1"]
    if spec["row"].get("start") == "pretrained":   # the dense stage scored the pretrained start
        row["f1_start"], row["f1_dense"] = row["f1_dense"], teacher_f1(spec)
    row["delta_f1"] = row["f1"] - row["f1_dense"] if row["f1_dense"] is not None else None
    if "oneshot" in st:
        row["f1_after_prune_no_finetune"] = st["oneshot"]["f1"]
    prune_sec = st.get("recover") or st.get("gradual") or st.get("shrink") or {}
    row.update(target_sparsity=prune_sec.get("target_sparsity"), params=prune_sec.get("params"),
               nonzero_params=prune_sec.get("nonzero_params"), train_seconds=prune_sec.get("train_seconds"))
    if part == "structured":
        row.update(structure=prune_sec.get("structure"),
                   throughput_speedup_b32=prune_sec.get("throughput_speedup_b32"),
                   latency_speedup_b1=prune_sec.get("latency_speedup_b1"),
                   cost_before=prune_sec.get("cost_before"), cost_after=prune_sec.get("cost_after"))
    return row


def run_part(part: str, args) -> Path | None:
    from sparseft.utils.env import describe_environment

    missing = [p for p in needs(part, args) if not (ROOT / p).exists()]
    if missing:
        print(f"skip {part}: missing {missing}" + (" (run --only teacher first)" if part != "teacher" else ""))
        return None
    t0 = time.perf_counter()
    rows, details = [], []
    for spec in plan(part, args):
        if args.runs and not any(key in spec["name"] for key in args.runs):
            continue
        print(f"[{part}] {spec['name']}", flush=True)
        result = run_in_child(spec)
        rows.append(summarize(part, spec, result))
        details.append({"run": spec["name"], "stages": result.get("stages")})
    if part == "lm":
        dense = next((r["perplexity"] for r in rows if r.get("pruner") == "dense" and "perplexity" in r), None)
        for r in rows:
            if dense and "perplexity" in r:
                r["ppl_ratio_vs_dense"] = r["perplexity"] / dense
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    record = {"experiment": experiment(part, args), "command": " ".join(["python", "benchmarks/bench_prune.py",
                                                                  *sys.argv[1:]]),
              "data": data_note(args), "teacher": teacher_path(args), "recovery_epochs": args.recovery_epochs,
              "recovery_lr": args.recovery_lr,
              "quick": args.quick, "env": describe_environment(),
              "wall_seconds": time.perf_counter() - t0, "rows": rows, "details": details}
    folder = (ROOT / run_dir(args) / "results") if args.quick else RESULTS
    path = write_json(folder / f"{experiment(part, args)}-{stamp}.json", record)
    print(f"wrote {path.relative_to(ROOT)}")
    for r in rows:
        keys = ("run", "f1", "delta_f1", "perplexity", "ppl_ratio_vs_dense", "throughput_speedup_b32", "error")
        print("  " + ", ".join(f"{k}={r[k]:.4g}" if isinstance(r.get(k), float) else f"{k}={r[k]}"
                               for k in keys if r.get(k) is not None))
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts (default: all, in order)")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny data, 3 steps, results not in results/")
    p.add_argument("--full-train", action="store_true", help="CoNLL: train on all 14,041 sentences")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9],
                   help="unstructured sparsities for the oneshot and gradual parts")
    p.add_argument("--teacher", default="", help="CoNLL parts: this fine-tuned model is the dense start and the "
                   "distillation teacher instead of the teacher part's (e.g. benchmarks/runs/headline/conll_full/model)")
    p.add_argument("--recovery-epochs", type=int, default=None,
                   help="epochs of every recovery / pruning fine-tuning stage (default: the recipes' 2; another "
                        "count gives the run folders and record names _rec<N>)")
    p.add_argument("--recovery-lr", type=float, default=None,
                   help="learning rate of every recovery / pruning fine-tuning stage that starts from the teacher "
                        "(default: the recipes' 1e-4; run folders and record names get _lr<value>)")
    p.add_argument("--movement-start", choices=("pretrained", "teacher"), default="pretrained",
                   help="gradual movement pruning starts from the pretrained model (fine-pruning, distilling "
                   "from the teacher; the default) or from the fine-tuned teacher itself")
    p.add_argument("--pretrained", default="minilm", help="the pretrained start of fine-pruning runs")
    p.add_argument("--fine-prune-epochs", type=int, default=3,
                   help="epochs of a fine-pruning run from the pretrained model (default 3: the teacher's)")
    p.add_argument("--movement-regrow", action="store_true",
                   help="gradual movement pruning with regrow=true: pruned weights can return (run name _regrow)")
    p.add_argument("--movement-score", choices=("sum", "adam"), default="sum",
                   help="movement scores: raw sum of -grad*W, or adam = learned by unit-rate Adam as in Sanh et al. "
                        "(pruner_args.score; run name _adam)")
    p.add_argument("--movement-prune-start", type=float, default=0.0,
                   help="gradual movement pruning: fraction of the steps before the first pruning event, a score "
                        "warm-up (default 0: the recipe's; run name _warm<percent>)")
    p.add_argument("--gradual-pruners", nargs="+", default=list(GRADUAL_PRUNERS), choices=GRADUAL_PRUNERS,
                   help="pruners of the gradual part (cubic schedule during fine-tuning)")
    p.add_argument("--lm-model", default="smollm2", help="model of the lm part (alias or folder)")
    p.add_argument("--lm-data", default="", help="text file replacing wiki.valid.tokens (smoke tests)")
    p.add_argument("--lm-calib-samples", type=int, default=128,
                   help="lm part: 512-token calibration windows for Wanda/SparseGPT (default 128, the papers' "
                        "count; 32 = the first protocol, record prune_lm)")
    p.add_argument("--lm-sequential", action="store_true",
                   help="lm part: Wanda/SparseGPT calibrate each block's layers in call order on the already "
                        "pruned layers' outputs (sequential=true; record name suffix _seq)")
    p.add_argument("--lm-damp", type=float, default=None,
                   help="lm part: SparseGPT's damp (fraction of H's mean diagonal; default the config's 0.01); "
                        "run and record names get _damp<value>")
    p.add_argument("--lm-selection", action="store_true",
                   help="lm part on the held-out selection slice: --lm-data = the first 90%% of the lines of "
                        "wiki.valid.tokens (written to benchmarks/runs/lm_selection/), record suffix _selection; "
                        "its own eval windows are that file's last 10%%, so the reported windows stay unseen")
    p.add_argument("--record-suffix", default="",
                   help="appended to the record name (e.g. _selection for a run on a held-out selection file)")
    p.add_argument("--runs", nargs="+", help="only runs whose name contains one of these strings")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    return p


def main() -> int:
    p = build_parser()
    args = p.parse_args()
    prepare(ROOT)
    if args.child:
        return child(*args.child)
    if args.lm_selection:
        if args.lm_data:
            p.error("--lm-selection builds its own --lm-data file; give one of them")
        args.lm_data, args.record_suffix = selection_file(), args.record_suffix or "_selection"
    return run_parts(args.only or PARTS, run_part, args)


if __name__ == "__main__":
    sys.exit(main())

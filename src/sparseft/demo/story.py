"""The demo's story in four recipes: full FT vs sparse FT at 1% vs LoRA at the same trainable
count, then the sparse model compressed (structured pruning + distillation, int8) and exported.

    sparseft demo            # runs/demo: four run folders, one comparison table, report.md + plots
    sparseft demo --quick    # the same path on a tiny budget (seconds per step: the test suite)

Each step is a packaged recipe (`sparseft/recipes/demo_*.yaml`, its first line says how to run
it alone) run by `sparseft run` in its own process, so that each row's peak memory is its own
process's peak (RSS is a per-process high-water mark). Then `report.compare` reads the four
run folders' metrics.json and writes the table, report.md, report.html and the plots into the
demo folder. Data: the bundled synthetic NER set (`demo/toy_ner.py`), no download.

Overrides: `KEY=VALUE` applies to every step's recipe, `STEP.KEY=VALUE` (STEP one of full,
sparse, lora, compressed) to one, e.g. `sparse.stages.finetune.lr=5e-3`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

STEPS = ("full", "sparse", "lora", "compressed")
RECIPES = {"full": "demo_full.yaml", "sparse": "demo_sparse.yaml", "lora": "demo_lora.yaml",
           "compressed": "demo_compress.yaml"}
TRAIN_STAGE = {"full": "finetune", "sparse": "finetune", "lora": "finetune", "compressed": "shrink"}
OWNER = "demo"

# --quick: the same four recipes on a tiny budget (the test suite runs this end to end)
QUICK_DATA = {"n_train": 96, "n_dev": 48}
QUICK = {
    "full": ["stages.finetune.max_steps=3", "stages.dev.repeats=1", "stages.finetune.eval_every=never"],
    "sparse": ["stages.finetune.max_steps=3", "stages.finetune.mask_options.n_batches=2", "stages.dev.repeats=1",
               "stages.finetune.eval_every=never"],
    "lora": ["stages.finetune.max_steps=3", "stages.dev.repeats=1", "stages.finetune.eval_every=never"],
    "compressed": ["stages.shrink.max_steps=2", "stages.shrink.calib_samples=16", "stages.pruned.repeats=1",
                   "stages.int8.repeats=1", "stages.shrink.eval_every=never", "stages.export.check_examples=8"],
}


@dataclass
class DemoResult:
    out_dir: Path
    table: str
    report: Path


def split_overrides(overrides: Sequence[str]) -> dict[str, list[str]]:
    """`KEY=VALUE` -> every step; `STEP.KEY=VALUE` -> that step only."""
    out: dict[str, list[str]] = {s: [] for s in STEPS}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. sparse.stages.finetune.lr=5e-3)")
        head, _, rest = item.partition(".")
        if head in STEPS and rest:
            out[head].append(rest)
        else:
            for s in STEPS:
                out[s].append(item)
    return out


def step_overrides(step: str, out: Path, model: str, quick: bool, extra: Sequence[str]) -> list[str]:
    data = out / "data"
    source = str(out / "sparse" / "model") if step == "compressed" else model
    base = [f"model={source}", f"output_dir={out / step}", f"data.train={data / 'train.conll'}",
            f"data.eval={data / 'dev.conll'}"]
    if quick:
        base += QUICK[step] + [f"stages.{TRAIN_STAGE[step]}.progress=false"]
    return base + list(extra)


def _clear_step_dir(path: Path, overwrite: bool) -> None:
    """A step folder from an earlier demo is removed (its training log would be appended to);
    only folders sparseft marked as its own are removed, others need --overwrite."""
    from sparseft.utils.outdir import OutputDirError, read_marker

    if not path.exists():
        return
    marker = read_marker(path)
    if marker is not None and str(marker.get("owner") or "").startswith("run:"):
        shutil.rmtree(path)
    elif any(path.iterdir()) and not overwrite:
        raise OutputDirError(f"demo step folder {path} is not empty and was not written by sparseft; "
                             f"choose another --output-dir or pass --overwrite")


def run_step(step: str, recipe: Path, overrides: list[str], out: Path, overwrite: bool) -> None:
    """`sparseft run <recipe> ...` in a child process; its printed report goes to logs/<step>.log."""
    log = out / "logs" / f"{step}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "sparseft.cli.main", "run", str(recipe), *overrides]
    if overwrite:
        cmd.append("--overwrite")
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT if not sys.stderr.isatty() else None,
                              env=env)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise ValueError(f"demo step {step!r} failed (exit {proc.returncode}); full output in {log}")


def labels_for(out: Path) -> dict[str, str]:
    """Display labels from what the runs logged (density, LoRA rank)."""
    import json

    labels = {"full": "full FT", "compressed/pruned": "sparse FT -> pruned 50% FFN + KD",
              "compressed/int8": "... + int8, exported"}
    try:
        sp = json.loads((out / "sparse" / "metrics.json").read_text())["stages"]["finetune"]
        labels["sparse"] = f"sparse FT {100 * float(sp['density']):.0f}% ({sp.get('mask', 'mask')})"
    except (OSError, KeyError, ValueError, TypeError):
        labels["sparse"] = "sparse FT"
    try:
        lo = json.loads((out / "lora" / "metrics.json").read_text())["stages"]["finetune"]
        labels["lora"] = f"LoRA r{lo['rank']}"
    except (OSError, KeyError, ValueError):
        labels["lora"] = "LoRA"
    return labels


def _intro(recipes: dict, quick: bool) -> list[str]:
    lr = {s: recipes[s].stages[0].params.get("lr") for s in STEPS}
    sp = recipes["sparse"].stages[0].params
    data = recipes["full"].data
    return [
        "The bundled synthetic NER set (`sparseft.demo.toy_ner`: train and dev draw entity names from "
        f"disjoint pools), model `{recipes['full'].model}` (`minilm`: the embedded all-MiniLM-L6-v2). Four runs, "
        "each its own folder and process:",
        "",
        f"- **full FT** (`full/`): every weight trains, lr {lr['full']:g}.",
        f"- **sparse FT** (`sparse/`): {100 * float(sp.get('density') or 0.01):g}% of the encoder's Linear weights "
        f"({sp.get('mask', 'fisher')} mask) + the new head, lr {lr['sparse']:g}; ships as a sparse diff.",
        f"- **LoRA** (`lora/`): peft LoRA with the rank closest to the same trainable count, lr {lr['lora']:g}; "
        "ships as an adapter.",
        f"- **compressed** (`compressed/`): the sparse model, 50% of FFN neurons removed, recovered with "
        f"distillation (lr {lr['compressed']:g}), then dynamic int8, exported as a compressed checkpoint.",
        "",
        f"Data: {Path(data.train).name} / {Path(data.eval).name}, max_length {data.max_length}."
        + (" **Quick mode: a few steps each, numbers mean nothing.**" if quick else ""),
        "The compressed rows' train time is the recovery only (the sparse row has the fine-tuning).",
        "",
    ]


def run_demo(out_dir: str | Path = "runs/demo", *, model: str = "minilm", quick: bool = False,
             overrides: Sequence[str] = (), overwrite: bool = False, html: bool = True) -> DemoResult:
    """Write the toy data, run the four steps, compare them; returns the table and report path."""
    from sparseft.config.recipe import load_recipe
    from sparseft.demo.toy_ner import write_toy_ner
    from sparseft.report.compare import compare
    from sparseft.utils.outdir import prepare_output_dir

    out = Path(out_dir)
    extra = split_overrides(overrides)
    recipes, paths = {}, {}
    pkg = resources.files("sparseft") / "recipes"
    for step in STEPS:  # validate every recipe and override before any work
        with resources.as_file(pkg / RECIPES[step]) as path:
            paths[step] = Path(path)
            recipes[step] = load_recipe(path, step_overrides(step, out, model, quick, extra[step]))
    prepare_output_dir(out, owner=OWNER, overwrite=overwrite, inputs=[model])
    write_toy_ner(out / "data", **(QUICK_DATA if quick else {}))
    for i, step in enumerate(STEPS, 1):
        stage = recipes[step].stages[0]
        print(f"[{i}/{len(STEPS)}] {step}: {stage.method} (lr {stage.params.get('lr')}) -> {out / step}", flush=True)
        _clear_step_dir(out / step, overwrite)
        run_step(step, paths[step], step_overrides(step, out, model, quick, extra[step]), out, overwrite)
    comp = compare([out / s for s in STEPS], out, labels=labels_for(out), title="sparseft demo: sparse fine-tuning "
                   "-> compression on MiniLM", intro=_intro(recipes, quick), html=html)
    return DemoResult(out, comp.text_table(), out / "report.md")

"""Run a recipe: load the model and data once, then walk the stages in order.

A stage is a registered method of kind "stage": a config dataclass plus `apply(ctx, cfg)`.
Stages share one `RunContext` (model, tokenizer, data, report, output folder) passed explicitly
from stage to stage: there is no global session object.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparseft.config.recipe import Recipe
from sparseft.load.data import TaskData
from sparseft.report.card import Report
from sparseft.utils.dist import is_main_process
from sparseft.utils.io import atomic_write_text
from sparseft.utils.outdir import prepare_output_dir, run_owner as run_owner_of
from sparseft.utils.seed import seed_everything


@dataclass
class RunContext:
    recipe: Recipe
    output_dir: Path
    model: Any = None
    tokenizer: Any = None
    data: TaskData | None = None
    report: Report = field(default_factory=Report)
    state: dict[str, Any] = field(default_factory=dict)  # stage outputs other stages may read
    overwrite: bool = False  # the run may replace folders sparseft did not write (utils/outdir.py)

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return 0 if pad is None else int(pad)


def load_context(recipe: Recipe, *, title: str | None = None) -> RunContext:
    """Tokenizer -> data (labels come from the training data) -> model with those labels.

    A recipe without training data (`data.train` empty: one-shot pruning or quantization of a
    fine-tuned checkpoint) loads no data; the model's labels then come from its own config.
    """
    from sparseft.load.data import build_task_data, check_max_length
    from sparseft.load.model import load_model, load_tokenizer

    out = Path(recipe.output_dir)
    ctx = RunContext(recipe=recipe, output_dir=out, report=Report(title=title or f"sparseft run: {out.name}"))
    t0 = time.perf_counter()
    ctx.tokenizer = load_tokenizer(recipe.model)
    if recipe.data.train:
        ctx.data = build_task_data(recipe.data, ctx.tokenizer)
    seed_everything(recipe.seed)  # before the model: new heads are initialised from the seed
    labels = ctx.data.labels if ctx.data else None
    ctx.model = load_model(recipe.model, recipe.data.task, labels=labels or None)
    if ctx.data:
        check_max_length(recipe.data, ctx.model)  # before an IndexError deep in the first forward
    info = {"model": recipe.model, "task": recipe.data.task}
    if ctx.data:
        info.update(train_examples=len(ctx.data.train), eval_examples=len(ctx.data.eval), labels=len(ctx.data.labels))
    ctx.report.log("load", {**info, "seconds": time.perf_counter() - t0})
    return ctx


def run_owner(recipe: Recipe) -> str:
    """Who a run folder belongs to: the recipe's stage list (a rerun or resume matches it)."""
    return run_owner_of([s.method for s in recipe.stages])


def prepare_run_dir(recipe: Recipe, *, overwrite: bool = False) -> Path:
    """Check (and create, on the main process) the run folder before any work is done.

    A non-empty folder sparseft did not make for the same stage list is refused unless
    `overwrite`; a folder that is or contains the model being read is always refused.
    """
    return prepare_output_dir(recipe.output_dir, owner=run_owner(recipe), overwrite=overwrite,
                              inputs=[recipe.model], write=is_main_process())


def run(recipe: Recipe, *, print_report: bool = True, title: str | None = None,
        overwrite: bool = False) -> RunContext:
    """Run every stage of `recipe`; writes report.md / metrics.json into its output folder.

    Args:
        overwrite: allow an output folder sparseft did not write (see `prepare_run_dir`).
    """
    from sparseft.methods import build_stage_config  # registers every stage

    configs = [(s, build_stage_config(s, recipe)) for s in recipe.stages]  # validate all before work
    prepare_run_dir(recipe, overwrite=overwrite)
    ctx = load_context(recipe, title=title)
    ctx.overwrite = overwrite
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    # recipe.yaml is written once the first stage has succeeded: a run refused at its start (e.g. a
    # resume into a folder holding another run) leaves the folder's earlier recipe.yaml untouched.
    recipe_written = False
    for stage, (method, cfg) in zip(recipe.stages, (c for _, c in configs)):
        t0 = time.perf_counter()
        method.apply_fn(ctx, cfg, stage.name)
        ctx.report.log(stage.name, {"method": stage.method, "stage_seconds": time.perf_counter() - t0})
        if is_main_process():  # one writer under multi-process launches
            if not recipe_written:
                atomic_write_text(ctx.output_dir / "recipe.yaml", recipe.to_yaml())
                recipe_written = True
            ctx.report.write(ctx.output_dir)
    if is_main_process() and not recipe_written:
        atomic_write_text(ctx.output_dir / "recipe.yaml", recipe.to_yaml())
    if print_report and is_main_process():
        print(ctx.report.render_text())
    return ctx

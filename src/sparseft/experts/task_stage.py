"""Recipe stages `task_experts` (per-task sparse diffs on one backbone) and `esft`.

    # the recipe's data block is any one of the tasks (it loads the sequence-classification model)
    - name: tasks
      method: task_experts
      tasks:
        - {name: sst2, train: ../shared/data/sst2/train.tsv, format: tsv, eval_fraction: 0.05}
        - {name: ag, train: ../shared/data/ag_news/train.csv, eval: ../shared/data/ag_news/validation.csv,
           format: csv, columns: [label, title, description], text_col: [title, description]}
        - {name: banking, train: ../shared/data/banking77/train.csv, label_col: category}
      mask: fisher
      density: 0.01
      mask_args: {n_batches: 8}
      sampling: temperature      # uniform | proportional | temperature (T = temperature)
      epochs: 1

`task_experts` reads every task (DataConfig fields per entry), builds the MultiTaskModel on the
loaded model (experts/multitask.py), trains all tasks with L = sum_k L_k (experts/task_train.py),
evaluates each task's accuracy, and writes `<output_dir>/task_experts` (base reference + one diff
per task, export/task_experts.py) plus `task_experts.json` (metrics) and `loss.jsonl`. Afterwards
the run's model is task `serve`'s extracted path (default: the first task), a plain model, so
`eval` / `save` stages can follow; the multi-task model is in `ctx.state["<name>_model"]`.

    - name: esft                 # after a moefy / upcycle stage: tune only the experts the task uses
      method: esft
      threshold: 0.5             # cumulative routing share per layer
      score: token               # token | gate
      epochs: 1                  # + every TrainConfig field

`esft` scores the experts on the first `score_batches` x `score_batch_size` training examples,
selects and freezes (experts/esft.py), fine-tunes with the foundation loop, and logs the selection
(experts per layer, shares), trainable parameters and the task metric before and after.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from sparseft.compress.calibration import calibration_batches
from sparseft.config.base import save_config
from sparseft.experts.task_config import ESFTConfig, TaskExpertsConfig
from sparseft.registry import register_method
from sparseft.train.config import TrainConfig
from sparseft.utils.io import atomic_write_json


@dataclass
class TaskExpertsStageConfig(TaskExpertsConfig):
    """Every TaskExpertsConfig field, plus:

    Args:
        tasks: [{name, train, eval, format, text_col, label_col, ...}]: a name and DataConfig fields
            (task 'cls') per task.
        serve: the task whose extracted path becomes the run's model (default: the first).
        save_base: also write the backbone into the artifact (base/), for bases a fresh load
            would not reproduce.
        output_dir: the artifact, metrics and loss log.
    """

    tasks: list[dict] = field(default_factory=list)
    serve: str = ""
    save_base: bool = False
    output_dir: str = "runs/task_experts"

    def __post_init__(self) -> None:
        from sparseft.experts.task_data import task_data_configs

        super().__post_init__()
        names = list(task_data_configs(self.tasks))
        if self.serve and self.serve not in names:
            raise ValueError(f"serve={self.serve!r} is not one of the tasks {names}")

    def build(self) -> TaskExpertsConfig:
        return TaskExpertsConfig(**{f.name: getattr(self, f.name) for f in fields(TaskExpertsConfig)})


def _jsonl(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")

    def write(record: dict) -> None:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return write


def task_experts_stage(ctx, cfg: TaskExpertsStageConfig, name: str) -> None:
    from sparseft.experts.multitask import build_task_experts, extract_task
    from sparseft.experts.task_data import load_tasks, task_data_configs
    from sparseft.experts.task_train import train_tasks
    from sparseft.export.task_experts import save_task_experts
    from sparseft.load.data import check_max_length
    from sparseft.load.tokenize import PadCollator

    tcfg = cfg.build()
    configs = task_data_configs(cfg.tasks)
    for dcfg in configs.values():
        check_max_length(dcfg, ctx.model)
    data = load_tasks(configs, ctx.tokenizer)
    need = tcfg.mask_config().batches_needed()
    batches = ({t: calibration_batches(d.train, ctx.pad_id, need * tcfg.batch_size, tcfg.batch_size)
                for t, d in data.items()} if need else None)
    out = Path(cfg.output_dir)
    t0 = time.perf_counter()
    mt = build_task_experts(ctx.model, {t: d.labels for t, d in data.items()}, tcfg, batches=batches)
    select_seconds = time.perf_counter() - t0
    result = train_tasks(mt, {t: d.train for t, d in data.items()}, tcfg, collate_fn=PadCollator(ctx.pad_id),
                         eval_data={t: d.eval for t, d in data.items()}, log=_jsonl(out / "loss.jsonl"))
    artifact = save_task_experts(mt, out / "task_experts", base_model=ctx.recipe.model, config=tcfg,
                                 save_base=cfg.save_base, overwrite=True)
    counts = {t: mt.task_parameter_count(t) for t in mt.tasks}
    base_params = sum(t.numel() for t in mt.base_tensors().values())
    stored = base_params + sum(c["delta"] * 2 + c["head"] for c in counts.values())   # values + indices
    metrics = {"tasks": list(mt.tasks), "examples": {t: len(d.train) for t, d in data.items()},
               "accuracy": result["eval"], "steps": result["steps"], "train_seconds": result["train_seconds"],
               "select_seconds": select_seconds, "batch_sizes": result["batch_sizes"], "passes": result["passes"],
               "first_losses": result["first_losses"], "last_losses": result["last_losses"],
               "task_params": counts, "base_params": base_params, "stored_params": stored,
               "stored_vs_one_model": stored / base_params, "artifact": str(artifact)}
    ctx.report.log(name, metrics)
    atomic_write_json(out / "task_experts.json", metrics)
    save_config(tcfg, out, "sparseft_task_experts.json")
    ctx.state[f"{name}_model"] = mt
    ctx.state[name] = metrics
    ctx.model = extract_task(mt, cfg.serve or next(iter(mt.tasks)))


register_method(kind="stage", name="task_experts", config_cls=TaskExpertsStageConfig, apply_fn=task_experts_stage,
                description="task experts: per-task sparse diffs on one backbone, L = sum of task losses")


@dataclass
class ESFTStageConfig(TrainConfig):
    """Every TrainConfig field, plus:

    Args:
        threshold / score / min_experts / max_experts / train_router / score_batches: ESFTConfig.
        score_batch_size: examples per scoring batch.
        heads: modules trained densely too (a fresh task head); [] = only the experts.
        baseline: evaluate before and after (needs eval data).
    """

    threshold: float = 0.5
    score: str = "token"
    min_experts: int = 1
    max_experts: int = 0
    train_router: bool = False
    score_batches: int = 16
    score_batch_size: int = 8
    heads: list[str] = field(default_factory=lambda: ["classifier", "score"])
    baseline: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.build()

    def build(self) -> ESFTConfig:
        return ESFTConfig(threshold=self.threshold, score=self.score, min_experts=self.min_experts,
                          max_experts=self.max_experts, train_router=self.train_router,
                          score_batches=self.score_batches)

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})


def esft_stage(ctx, cfg: ESFTStageConfig, name: str) -> None:
    from sparseft.eval.evaluate import evaluate
    from sparseft.experts.esft import esft_
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import best_metric_for
    from sparseft.train.loop import train

    model, data = ctx.model, ctx.data
    if data is None or not data.train:
        raise ValueError(f"stage {name} (esft): needs training data (data.train) to score and tune the experts")
    ecfg = cfg.build()
    batches = calibration_batches(data.train, ctx.pad_id, ecfg.score_batches * cfg.score_batch_size,
                                  cfg.score_batch_size)
    metric = best_metric_for(data.task, cfg.metric_for_best)

    def eval_fn(m):
        return evaluate(m, data, pad_id=ctx.pad_id, batch_size=cfg.eval_batch_size)

    before = eval_fn(model) if cfg.baseline and data.eval else None
    plan = esft_(model, ecfg, batches, heads=cfg.heads)
    try:
        result = train(model, data.train, cfg.train_config(), collate_fn=PadCollator(ctx.pad_id),
                       eval_fn=eval_fn if data.eval else None, metric=metric,
                       param_groups=plan.param_groups(cfg.weight_decay))
    finally:
        plan.remove()
        for p in model.parameters():
            p.requires_grad_(True)
    metrics = {**plan.summary(), "threshold": ecfg.threshold, "score": ecfg.score, "steps": result.steps,
               "train_seconds": result.train_seconds, f"best_{result.metric_name}": result.best_metric,
               "best_step": result.best_step}
    after = eval_fn(model) if cfg.baseline and data.eval else None
    key = metric[0]
    if before is not None and after is not None and before.get(key) is not None and after.get(key) is not None:
        metrics.update({f"{key}_before": before[key], f"{key}_after": after[key],
                        f"delta_{key}": after[key] - before[key]})
    ctx.report.log(name, metrics)
    ctx.state[name] = result
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "esft.json", metrics)
    save_config(ecfg, out, "sparseft_esft.json")


register_method(kind="stage", name="esft", config_cls=ESFTStageConfig, apply_fn=esft_stage,
                description="expert-specialized fine-tuning: tune only the experts a task routes to")


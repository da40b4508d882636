"""Recipe stages `prune` (one-shot) and `prune_finetune` (prune while fine-tuning, with KD).

    - name: prune                      # one-shot, e.g. Wanda 2:4 calibrated on 128 train examples
      method: prune
      pruner: wanda                    # any registered pruning method
      pruner_args: {pattern: "2:4"}    # that method's config fields
      calib_samples: 128

    - name: gradual                    # cubic schedule 0 -> 90% during fine-tuning, KD on
      method: prune_finetune
      pruner: magnitude                # magnitude | movement | random for schedule=cubic
      final_sparsity: 0.9
      epochs: 3                        # + every TrainConfig field
      distill: true                    # teacher = frozen copy of the model entering the stage

Both log per-layer and total sparsity, parameter and nonzero counts, size, and CPU latency
(batch 1) / throughput (batch 32) before and after, and write `sparsity.json` plus the pruning
config (`sparseft_prune.json`) into the stage's output folder. `prune_finetune` with
schedule=oneshot prunes once with any method and fine-tunes with the masks held fixed
(structured pruning needs no masks: the weights are gone).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from sparseft.compress.calibration import check_calibration, stage_calibration_batches
from sparseft.compress.prune.api import needs_batches, prune_
from sparseft.compress.prune.common import (default_ignore, default_targets, nonzero_masks, prunable_weights,
                                            sparsity_report)
from sparseft.compress.prune.movement import MovementScorer
from sparseft.compress.prune.random import random_scores
from sparseft.compress.prune.schedule import (CubicSchedule, FixedScorer, GradualPruner, KeepMasks,
                                              MagnitudeScorer)
from sparseft.config.base import BaseConfig, save_config
from sparseft.eval.cost import stage_cost
from sparseft.registry import REGISTRY, register_method
from sparseft.train.config import TrainConfig
from sparseft.train.defaults import DEFAULT_LR
from sparseft.train.identity import recipe_inputs
from sparseft.utils.io import atomic_write_json

GRADUAL_PRUNERS = ("magnitude", "movement", "random")
SCHEDULES = ("cubic", "oneshot")


def build_pruner_config(pruner: str, args: dict, **overrides) -> BaseConfig:
    """The registered pruning config named `pruner`, built (and validated) from `args`."""
    method = REGISTRY.get("prune", pruner)
    if not isinstance(args, dict):
        raise ValueError(f"pruner_args must be a mapping of {method.config_cls.__name__} fields, got {args!r}")
    try:
        return method.config_cls.from_dict({**args, **overrides})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"pruner {pruner!r}: {exc}") from None


@dataclass
class PruneStageConfig(BaseConfig):
    """Args:
        pruner: registered pruning method (magnitude, random, movement, nm, wanda, sparsegpt, structured).
        pruner_args: fields of that method's config (e.g. {sparsity: 0.7, allocation: per_row}).
        calib_samples: first N training examples used as calibration batches (data-driven methods).
        calib_batch_size: examples per calibration batch.
        cost: measure size and CPU latency/throughput before and after.
        seq_len / repeats: timing protocol (sparseft.eval.cost).
        output_dir: where sparsity.json and the pruning config go.
    """

    pruner: str = "magnitude"
    pruner_args: dict = field(default_factory=dict)
    calib_samples: int = 128
    calib_batch_size: int = 8
    cost: bool = True
    seq_len: int = 64
    repeats: int = 10
    output_dir: str = "runs/prune"

    def __post_init__(self) -> None:
        check_calibration(self.calib_samples, self.calib_batch_size)
        self.build()

    def build(self) -> BaseConfig:
        return build_pruner_config(self.pruner, self.pruner_args)


def _structure(model) -> dict:
    c = model.config
    keys = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    return {k: getattr(c, k) for k in keys if getattr(c, k, None) is not None}


def _log_result(ctx, name: str, pcfg: BaseConfig, out_dir: str, before: dict | None, after: dict | None,
                extra: dict) -> None:
    """Report section + sparsity.json + the pruning config next to the stage outputs."""
    from sparseft.eval.cost import count_parameters

    targets = getattr(pcfg, "targets", None) or default_targets()
    ignore = getattr(pcfg, "ignore", None)
    ignore = default_ignore() if ignore is None else ignore
    sparsity = sparsity_report(ctx.model, targets, ignore)
    counts = count_parameters(ctx.model)
    metrics = {"pruner": REGISTRY.for_config(pcfg).name, **extra,
               "target_sparsity": sparsity["sparsity"], "target_zeros": sparsity["zeros"],
               "target_entries": sparsity["entries"], "params": counts["params"],
               "nonzero_params": counts["nonzero_params"], "model_sparsity": counts["sparsity"],
               "structure": _structure(ctx.model), "per_layer_sparsity": sparsity["per_layer"]}
    if before and after:
        metrics["cost_before"], metrics["cost_after"] = before, after
        metrics["throughput_speedup_b32"] = after["throughput_seq_s_b32"] / before["throughput_seq_s_b32"]
        metrics["latency_speedup_b1"] = before["latency_ms_b1"] / after["latency_ms_b1"]
    ctx.report.log(name, metrics)
    ctx.state[f"{name}_prune"] = {"config": pcfg, "sparsity": sparsity}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out_dir) / "sparsity.json", metrics)
    save_config(pcfg, out_dir, "sparseft_prune.json")


def prune_stage(ctx, cfg: PruneStageConfig, name: str) -> None:
    pcfg = cfg.build()
    batches = stage_calibration_batches(ctx, cfg.calib_samples, cfg.calib_batch_size) if needs_batches(pcfg) else None
    before = stage_cost(ctx.model, cfg)
    structure_before = _structure(ctx.model)
    t0 = time.perf_counter()
    prune_(ctx.model, pcfg, batches=batches)
    seconds = time.perf_counter() - t0
    _log_result(ctx, name, pcfg, cfg.output_dir, before, stage_cost(ctx.model, cfg),
                {"prune_seconds": seconds, "calib_examples": sum(len(b["input_ids"]) for b in batches or []),
                 "structure_before": structure_before})


@dataclass
class PruneFinetuneConfig(TrainConfig):
    """Every TrainConfig field, plus:

    Args:
        pruner / pruner_args: the pruning method and its config fields. schedule=cubic supports
            magnitude, movement and random (its `sparsity` comes from the schedule); oneshot any.
        schedule: 'cubic' (Zhu & Gupta, during fine-tuning) or 'oneshot' (prune first, then
            fine-tune with the masks fixed).
        initial_sparsity / final_sparsity: the cubic ramp's end points.
        prune_start / prune_end: where the ramp starts and ends, as fractions of the total steps.
        prune_every: steps between pruning events (0: ten events over the ramp).
        regrow: pruner movement with schedule cubic only: each pruning event chooses among all
            entries by their movement score, so a pruned weight can come back with the value it
            had when it was pruned (hard movement pruning with straight-through scores, Sanh et
            al. 2020); False keeps pruned entries pruned (the masks only shrink).
        calib_samples / calib_batch_size: calibration data for data-driven one-shot pruners.
        distill: knowledge distillation from `teacher` (on by default).
        teacher: folder of the teacher model; "" = a frozen copy of the model entering this stage
            (it must already be fine-tuned: a `train` stage earlier or a fine-tuned `model:`).
        temperature / alpha / hidden_weight: see sparseft.train.distill.DistillConfig.
        cost / seq_len / repeats: cost measurement before and after.
    """

    lr: float = DEFAULT_LR["recovery"]
    pruner: str = "magnitude"
    pruner_args: dict = field(default_factory=dict)
    schedule: str = "cubic"
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.5
    prune_start: float = 0.0
    prune_end: float = 0.6
    prune_every: int = 0
    regrow: bool = False
    calib_samples: int = 128
    calib_batch_size: int = 8
    distill: bool = True
    teacher: str = ""
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0
    cost: bool = True
    seq_len: int = 64
    repeats: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check_calibration(self.calib_samples, self.calib_batch_size)
        if not 0.0 <= self.prune_start <= self.prune_end <= 1.0:
            raise ValueError(f"need 0 <= prune_start <= prune_end <= 1 (fractions of the training steps), "
                             f"got {self.prune_start} / {self.prune_end}")
        if self.prune_every < 0:
            raise ValueError(f"prune_every must be >= 0, got {self.prune_every}")
        if self.regrow and (self.schedule, self.pruner) != ("cubic", "movement"):
            raise ValueError(f"regrow needs pruner 'movement' with schedule 'cubic', got pruner {self.pruner!r} "
                             f"with schedule {self.schedule!r}")
        self.build_pruner()
        self.distill_config()

    def build_pruner(self) -> BaseConfig:
        if self.schedule == "oneshot":
            return build_pruner_config(self.pruner, self.pruner_args)
        if self.pruner not in GRADUAL_PRUNERS:
            raise ValueError(f"schedule='cubic' supports pruners {GRADUAL_PRUNERS}, got {self.pruner!r}; "
                             f"use schedule='oneshot' for the others")
        if "sparsity" in self.pruner_args:
            raise ValueError("with schedule='cubic' set final_sparsity (and initial_sparsity), "
                             "not pruner_args.sparsity")
        CubicSchedule(self.initial_sparsity, self.final_sparsity, 0, 1)   # validates the sparsities
        return build_pruner_config(self.pruner, self.pruner_args, sparsity=self.final_sparsity)

    def distill_config(self):
        from sparseft.train.distill import DistillConfig

        return DistillConfig(temperature=self.temperature, alpha=self.alpha, hidden_weight=self.hidden_weight)

    def train_config(self) -> TrainConfig:
        names = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{n: getattr(self, n) for n in names})


def total_train_steps(train_data, cfg: TrainConfig) -> int:
    """Optimizer steps `train()` will take (same arithmetic as the loop; WORLD_SIZE processes)."""
    from sparseft.train.loop import epoch_batches

    n_proc = int(os.environ.get("WORLD_SIZE", "1"))
    lengths = [len(x["input_ids"]) for x in train_data]
    per_epoch = math.ceil(math.ceil(len(epoch_batches(lengths, cfg, 0)) / n_proc) / cfg.grad_accum)
    return cfg.max_steps or per_epoch * cfg.epochs


def _is_finetuned(ctx) -> bool:
    """An earlier stage trained the model, or `model:` is a folder whose labels are the data's."""
    from sparseft.train.loop import TrainResult

    if any(isinstance(v, TrainResult) for v in ctx.state.values()):
        return True
    if not Path(ctx.recipe.model).is_dir():
        return False
    from transformers import AutoConfig

    saved = AutoConfig.from_pretrained(ctx.recipe.model).id2label or {}   # as saved, before load_model
    return [saved[i] for i in sorted(saved)] == list(ctx.data.labels)


def load_teacher(ctx, cfg: PruneFinetuneConfig):
    """The dense teacher: a given folder, or a frozen copy of the (fine-tuned) current model."""
    if cfg.teacher:
        from sparseft.load.model import load_model, model_labels

        if ctx.data.task == "lm":
            return load_model(cfg.teacher, "lm")
        teacher = load_model(cfg.teacher, ctx.data.task)
        if model_labels(teacher) != list(ctx.data.labels):
            raise ValueError(f"teacher {cfg.teacher} predicts labels {model_labels(teacher)}, the data has "
                             f"{ctx.data.labels}")
        return teacher
    if ctx.data.task != "lm" and not _is_finetuned(ctx):
        raise ValueError("distillation needs a fine-tuned teacher: put a `train` stage before this one, load a "
                         "fine-tuned folder as `model:`, set teacher=<folder>, or set distill=false")
    return copy.deepcopy(ctx.model)


def _scorer(cfg: PruneFinetuneConfig, pcfg, names: list[str], model):
    if cfg.pruner == "movement":
        return MovementScorer(names, pcfg.score)
    if cfg.pruner == "random":
        params = dict(model.named_parameters())
        return FixedScorer(random_scores([(n, params[n]) for n in names], pcfg.seed))
    return MagnitudeScorer(names)


def prune_finetune_stage(ctx, cfg: PruneFinetuneConfig, name: str) -> None:
    from sparseft.eval.evaluate import evaluate
    from sparseft.load.tokenize import PadCollator
    from sparseft.masks.mask import reapply_masks_
    from sparseft.train.config import best_metric_for
    from sparseft.train.distill import make_distill_loss
    from sparseft.train.loop import default_loss, train

    model, data = ctx.model, ctx.data
    pcfg = cfg.build_pruner()
    train_cfg = cfg.train_config()
    teacher = load_teacher(ctx, cfg) if cfg.distill else None     # before pruning: the dense model
    before = stage_cost(model, cfg)
    structure_before = _structure(model)
    metric_name, greater = best_metric_for(data.task, cfg.metric_for_best)
    select = (metric_name, greater)
    extra: dict = {"schedule": cfg.schedule, "distill": cfg.distill, "structure_before": structure_before}

    pruner = None
    if cfg.schedule == "oneshot":
        batches = stage_calibration_batches(ctx, cfg.calib_samples, cfg.calib_batch_size) if needs_batches(pcfg) else None
        t0 = time.perf_counter()
        prune_(model, pcfg, batches=batches)
        extra["prune_seconds"] = time.perf_counter() - t0
        # mask-based pruners keep their zeros through training; structured pruning removed the weights
        masks = nonzero_masks(model, pcfg.targets, pcfg.ignore) if hasattr(pcfg, "targets") else None
        post_step = [KeepMasks(masks)] if masks else []
    else:
        total = total_train_steps(data.train, train_cfg)
        start, end = int(cfg.prune_start * total), int(round(cfg.prune_end * total))
        every = cfg.prune_every or max(1, (end - start) // 10)
        schedule = CubicSchedule(cfg.initial_sparsity, cfg.final_sparsity, start, end, every)
        names = [n for n, _ in prunable_weights(model, pcfg.targets, pcfg.ignore)]
        pruner = GradualPruner(model, schedule, _scorer(cfg, pcfg, names, model), targets=pcfg.targets,
                               ignore=pcfg.ignore, allocation=pcfg.allocation, regrow=cfg.regrow)
        post_step = [pruner]
        extra.update({"prune_start_step": start, "prune_end_step": end, "prune_every": every, "total_steps": total})
        # the best checkpoint must be at the final sparsity: select on a key that is -inf before
        select = (f"{metric_name}_at_final_sparsity", greater)

    def eval_fn(m):
        out = evaluate(m, data, pad_id=ctx.pad_id, batch_size=cfg.eval_batch_size)
        if pruner is not None:
            reached = pruner.current >= cfg.final_sparsity - 1e-9
            out[select[0]] = out[metric_name] if reached else (float("-inf") if greater else float("inf"))
        return out

    loss_fn = make_distill_loss(teacher, cfg.distill_config()) if teacher is not None else default_loss
    result = train(model, data.train, train_cfg, collate_fn=PadCollator(ctx.pad_id),
                   eval_fn=eval_fn if data.eval else None, metric=select, loss_fn=loss_fn, post_step=post_step,
                   inputs=recipe_inputs(ctx.recipe, cfg))
    if pruner is not None:
        if pruner.current < cfg.final_sparsity - 1e-9:    # training stopped before the ramp ended
            pruner.prune_now(model, pruner.schedule.end)
            extra["pruned_to_final_after_training"] = True
        reapply_masks_(model, pruner.masks)                # also covers best weights from before the end
        extra["schedule_history"] = pruner.history
        if cfg.regrow:
            extra["regrown_entries"] = pruner.regrown
    elif post_step:
        reapply_masks_(model, post_step[0].masks)
    ctx.state[name] = result
    extra.update({"steps": result.steps, "train_seconds": result.train_seconds,
                  "seconds_per_step": result.seconds_per_step, "peak_memory_mb": result.peak_memory_mb,
                  f"best_{metric_name}": result.best_metric, "best_step": result.best_step})
    if teacher is not None:
        del teacher
    _log_result(ctx, name, pcfg, cfg.output_dir, before, stage_cost(model, cfg), extra)


register_method(kind="stage", name="prune", config_cls=PruneStageConfig, apply_fn=prune_stage,
                description="one-shot pruning (any registered pruner) with sparsity and cost report")
register_method(kind="stage", name="prune_finetune", config_cls=PruneFinetuneConfig, apply_fn=prune_finetune_stage,
                description="pruning during fine-tuning (cubic schedule or one-shot + masks), KD on by default")

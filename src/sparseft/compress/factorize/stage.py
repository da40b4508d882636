"""Recipe stages `factorize` (one-shot) and `factorize_finetune` (factorize, then recover with KD).

    - name: factorize                  # SVD-LLM at 20% fewer parameters in the targeted linears
      method: factorize
      factorizer: whiten_svd           # svd | asvd | whiten_svd | fisher_svd
      factorizer_args: {ratio: 0.2}    # that method's config fields (ratio / energy / ranks, targets ...)
      calib_samples: 128

    - name: recover                    # factorize, then fine-tune the factors with distillation
      method: factorize_finetune
      factorizer: fisher_svd
      factorizer_args: {ratio: 0.3}
      mode: full                       # full: train every parameter; sparse: the sparse fine-tuning
      epochs: 1                        #   engine on the factors only (mask / density)
      distill: true                    # teacher = the model entering the stage (the dense one)

Both evaluate the model before (the dense baseline) and right after factorizing when the run
has eval data, and log the task metric of each and the delta, the parameters of the targeted
layers before/after, each layer's rank (`per_layer_rank`, for plots) and the layers left dense
with the reason, plus size and CPU latency (batch 1) / throughput (batch 32) before and after.
`factorization.json` (the same) and the factorization config (`sparseft_factorize.json`) go to
the stage's output folder; the `save` stage writes the model as a factorized folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from sparseft.compress.calibration import check_calibration, stage_calibration_batches
from sparseft.compress.factorize.api import apply_plan_, plan_factorization
from sparseft.compress.factorize.layer import factorized_summary
from sparseft.config.base import BaseConfig, save_config
from sparseft.eval.cost import stage_cost
from sparseft.registry import REGISTRY, register_method
from sparseft.train.config import TrainConfig
from sparseft.train.defaults import DEFAULT_LR
from sparseft.utils.io import atomic_write_json

MODES = ("full", "sparse")
FACTOR_TARGETS = [r"re:\.(up|down)$"]      # the two nn.Linear children of every FactorizedLinear


def build_factorizer_config(factorizer: str, args: dict) -> BaseConfig:
    """The registered factorization config named `factorizer`, built (and validated) from `args`."""
    method = REGISTRY.get("factorize", factorizer)
    if not isinstance(args, dict):
        raise ValueError(f"factorizer_args must be a mapping of {method.config_cls.__name__} fields, got {args!r}")
    try:
        return method.config_cls.from_dict(args)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"factorizer {factorizer!r}: {exc}") from None


@dataclass
class FactorizeStageConfig(BaseConfig):
    """Args:
        factorizer: registered factorization method (svd, asvd, whiten_svd, fisher_svd).
        factorizer_args: fields of that method's config, e.g. {ratio: 0.3} or {energy: 0.9}.
        calib_samples / calib_batch_size: the first N training examples as calibration batches
            (asvd, whiten_svd; fisher_svd uses them with their labels).
        baseline: evaluate the model before factorizing (the dense baseline) and after (the delta).
        cost: measure size and CPU latency/throughput before and after.
        seq_len / repeats: timing protocol (sparseft.eval.cost).
        output_dir: where factorization.json and the factorization config go.
    """

    factorizer: str = "svd"
    factorizer_args: dict = field(default_factory=lambda: {"ratio": 0.3})
    calib_samples: int = 128
    calib_batch_size: int = 8
    baseline: bool = True
    cost: bool = True
    seq_len: int = 64
    repeats: int = 10
    output_dir: str = "runs/factorize"

    def __post_init__(self) -> None:
        check_calibration(self.calib_samples, self.calib_batch_size)
        self.build()

    def build(self) -> BaseConfig:
        return build_factorizer_config(self.factorizer, self.factorizer_args)


def _evaluate(ctx, cfg) -> dict | None:
    """Task metrics on the run's eval split (None without eval data or with baseline off)."""
    if not cfg.baseline or ctx.data is None or not ctx.data.eval:
        return None
    from sparseft.eval.evaluate import evaluate

    return evaluate(ctx.model, ctx.data, pad_id=ctx.pad_id, batch_size=getattr(cfg, "eval_batch_size", 64))


def _headline(task: str) -> str:
    from sparseft.train.config import best_metric_for

    return best_metric_for(task, "auto")[0]


def factorize_model(ctx, cfg, fcfg: BaseConfig) -> dict:
    """Calibrate (if needed), plan and apply; returns the plan report plus timings."""
    batches = (stage_calibration_batches(ctx, cfg.calib_samples, cfg.calib_batch_size)
               if fcfg.needs_batches() else None)
    t0 = time.perf_counter()
    plan = plan_factorization(ctx.model, fcfg, batches=batches)
    apply_plan_(ctx.model, plan)
    return {**plan.report(), "factorize_seconds": time.perf_counter() - t0,
            "calib_examples": sum(len(b["input_ids"]) for b in batches or [])}


def _log(ctx, name: str, fcfg: BaseConfig, out_dir: str, metrics: dict, dense: dict | None,
         after: dict | None, before_cost: dict | None, after_cost: dict | None) -> None:
    from sparseft.eval.cost import count_parameters

    if dense is not None and after is not None:
        key = _headline(ctx.data.task)
        metrics.update({f"dense_{key}": dense.get(key), f"{key}_after_factorize": after.get(key),
                        f"delta_{key}": (after.get(key) - dense.get(key))
                        if dense.get(key) is not None and after.get(key) is not None else None})
    metrics.update({"params": count_parameters(ctx.model)["params"],
                    "factor_params": factorized_summary(ctx.model)["factor_params"]})
    if before_cost and after_cost:
        metrics["cost_before"], metrics["cost_after"] = before_cost, after_cost
        metrics["params_before"] = before_cost["params"]
        metrics["throughput_speedup_b32"] = after_cost["throughput_seq_s_b32"] / before_cost["throughput_seq_s_b32"]
        metrics["latency_speedup_b1"] = before_cost["latency_ms_b1"] / after_cost["latency_ms_b1"]
        metrics["size_ratio"] = after_cost["size_mb"] / before_cost["size_mb"]
    ctx.report.log(name, metrics)
    ctx.state[f"{name}_factorize"] = {"config": fcfg, "report": metrics}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out_dir) / "factorization.json", metrics)
    save_config(fcfg, out_dir, "sparseft_factorize.json")


def factorize_stage(ctx, cfg: FactorizeStageConfig, name: str) -> None:
    fcfg = cfg.build()
    dense = _evaluate(ctx, cfg)
    before = stage_cost(ctx.model, cfg)
    metrics = factorize_model(ctx, cfg, fcfg)
    _log(ctx, name, fcfg, cfg.output_dir, metrics, dense, _evaluate(ctx, cfg), before, stage_cost(ctx.model, cfg))


@dataclass
class FactorizeFinetuneConfig(TrainConfig):
    """Every TrainConfig field, plus:

    Args:
        factorizer / factorizer_args / calib_samples / calib_batch_size / baseline: as for `factorize`.
        mode: "full" (train every parameter, factors included) or "sparse" (the sparse
            fine-tuning engine on the factors only, with `mask` / `density` / `mask_options`).
        distill: knowledge distillation from `teacher` (on by default).
        teacher: teacher folder; "" = a frozen copy of the model entering this stage (the
            unfactorized model; it must be fine-tuned already for ner/cls).
        temperature / alpha / hidden_weight: see sparseft.train.distill.DistillConfig.
        cost / seq_len / repeats: cost measurement before and after.
    """

    factorizer: str = "svd"
    factorizer_args: dict = field(default_factory=lambda: {"ratio": 0.3})
    calib_samples: int = 128
    calib_batch_size: int = 8
    baseline: bool = True
    lr: float = DEFAULT_LR["recovery"]
    mode: str = "full"
    mask: str = "magnitude"
    density: float = 0.1
    mask_options: dict = field(default_factory=dict)
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
        check_calibration(self.calib_samples, self.calib_batch_size)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self.build()
        self.distill_config()
        if self.mode == "sparse":
            self.mask_config()

    def build(self) -> BaseConfig:
        return build_factorizer_config(self.factorizer, self.factorizer_args)

    def mask_config(self):
        from sparseft.masks.select import mask_config

        return mask_config(self.mask, density=self.density, targets=FACTOR_TARGETS, **self.mask_options)

    def distill_config(self):
        from sparseft.train.distill import DistillConfig

        return DistillConfig(temperature=self.temperature, alpha=self.alpha, hidden_weight=self.hidden_weight)

    def train_config(self) -> TrainConfig:
        names = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{n: getattr(self, n) for n in names})


def factorize_finetune_stage(ctx, cfg: FactorizeFinetuneConfig, name: str) -> None:
    from sparseft.compress.prune.stage import load_teacher
    from sparseft.eval.evaluate import evaluate
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import best_metric_for
    from sparseft.train.distill import make_distill_loss
    from sparseft.train.loop import default_loss, train

    model, data = ctx.model, ctx.data
    fcfg = cfg.build()
    teacher = load_teacher(ctx, cfg) if cfg.distill else None      # before factorizing: the dense model
    dense = _evaluate(ctx, cfg)
    before = stage_cost(model, cfg)
    metrics = factorize_model(ctx, cfg, fcfg)
    after = _evaluate(ctx, cfg)
    metric = best_metric_for(data.task, cfg.metric_for_best)
    loss_fn = make_distill_loss(teacher, cfg.distill_config()) if teacher is not None else default_loss

    def eval_fn(m):
        return evaluate(m, data, pad_id=ctx.pad_id, batch_size=cfg.eval_batch_size)

    common = dict(collate_fn=PadCollator(ctx.pad_id), eval_fn=eval_fn if data.eval else None, metric=metric,
                  loss_fn=loss_fn)
    if cfg.mode == "sparse":
        from sparseft.sft.api import sparse_finetune

        result, diff = sparse_finetune(model, data.train, cfg.train_config(), cfg.mask_config(),
                                       base_id=ctx.recipe.model, **common)
        metrics.update({"sparse_selected": diff.count, "sparse_density": diff.manifest.get("density")})
    else:
        result = train(model, data.train, cfg.train_config(), **common)
    ctx.state[name] = result
    metrics.update({"mode": cfg.mode, "distill": cfg.distill, "steps": result.steps,
                    "train_seconds": result.train_seconds, "seconds_per_step": result.seconds_per_step,
                    "peak_memory_mb": result.peak_memory_mb, f"best_{metric[0]}": result.best_metric,
                    "best_step": result.best_step})
    if teacher is not None:
        del teacher
    _log(ctx, name, fcfg, cfg.output_dir, metrics, dense, after, before, stage_cost(model, cfg))


register_method(kind="stage", name="factorize", config_cls=FactorizeStageConfig, apply_fn=factorize_stage,
                description="low-rank factorization (svd, asvd, whiten_svd, fisher_svd) with baseline, delta, cost")
register_method(kind="stage", name="factorize_finetune", config_cls=FactorizeFinetuneConfig,
                apply_fn=factorize_finetune_stage,
                description="factorize, then fine-tune the factors (full or sparse) with distillation")


@dataclass
class MergeFactorsConfig(BaseConfig):
    """No fields: merge every FactorizedLinear back into a dense nn.Linear (original shapes)."""


def merge_factors_stage(ctx, cfg: MergeFactorsConfig, name: str) -> None:
    from sparseft.compress.factorize.layer import merge_factorized_

    ctx.report.log(name, {"merged_layers": merge_factorized_(ctx.model)})


register_method(kind="stage", name="merge_factors", config_cls=MergeFactorsConfig, apply_fn=merge_factors_stage,
                description="merge factorized layers back into dense Linear layers (original shapes)")

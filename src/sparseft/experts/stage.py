"""Recipe stages `moefy` (split the FFNs into routed experts, scored before/after) and `upcycle`.

    - name: moefy                       # 16 experts per FFN, 4 active per token, learned router
      method: moefy
      moefy_args: {num_experts: 16, top_k: 4, router: mlp, clustering: kmeans}
      calib_samples: 128                # training examples for the router / co-activation

With eval data the stage evaluates the model before (dense) and after, and logs the task metric
of each and the delta; it logs the expert counters of the after-evaluation (expert calls, the
FLOPs the experts ran vs the dense FFN's on the same tokens: `active_flops_share`), the router
training losses, and size / CPU latency / throughput before and after. `experts.json` (the same)
and the config (`sparseft_moefy.json`) go to the stage's output folder; the `save` stage writes
an expert folder that `sparseft.load` reads back.

    - name: upcycle                     # 4 copies of every FFN, top-2 router, then fine-tune
      method: upcycle
      num_experts: 4
      top_k: 2
      aux_loss_coef: 0.01               # load-balancing loss added to the task loss
      epochs: 1                         # + every TrainConfig field

`upcycle` checks that the upcycled model still computes the dense output (`init_max_abs_diff` on
a calibration batch), fine-tunes with the auxiliary loss added through the loop's `loss_fn` and
logged per optimizer step (`aux_loss.jsonl` in the stage folder; first / last / mean in the report).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sparseft.compress.calibration import check_calibration, stage_calibration_batches
from sparseft.config.base import BaseConfig, save_config
from sparseft.eval.cost import stage_cost
from sparseft.experts.api import moefy_
from sparseft.experts.config import MoEfyConfig, UpcycleConfig
from sparseft.experts.layer import expert_counters, reset_expert_counters
from sparseft.registry import register_method
from sparseft.train.config import TrainConfig
from sparseft.utils.io import atomic_write_json


@dataclass
class MoEfyStageConfig(BaseConfig):
    """Args:
        moefy_args: MoEfyConfig fields, e.g. {num_experts: 16, top_k: 4, router: mlp}.
        calib_samples / calib_batch_size: the first N training examples as calibration batches
            (router='mlp', clustering='coactivation').
        baseline: evaluate before (dense) and after, log the delta (needs eval data).
        cost / seq_len / repeats: size and CPU latency/throughput before and after (sparseft.eval.cost).
        output_dir: where experts.json and the config go.
    """

    moefy_args: dict = field(default_factory=dict)
    calib_samples: int = 128
    calib_batch_size: int = 8
    baseline: bool = True
    cost: bool = True
    seq_len: int = 64
    repeats: int = 10
    output_dir: str = "runs/moefy"

    def __post_init__(self) -> None:
        check_calibration(self.calib_samples, self.calib_batch_size)
        self.build()

    def build(self) -> MoEfyConfig:
        if not isinstance(self.moefy_args, dict):
            raise ValueError(f"moefy_args must be a mapping of MoEfyConfig fields, got {self.moefy_args!r}")
        try:
            return MoEfyConfig.from_dict(self.moefy_args)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"moefy_args: {exc}") from None


def _evaluate(ctx, cfg) -> dict | None:
    if not cfg.baseline or ctx.data is None or not ctx.data.eval:
        return None
    from sparseft.eval.evaluate import evaluate

    return evaluate(ctx.model, ctx.data, pad_id=ctx.pad_id, batch_size=64)


def moefy_stage(ctx, cfg: MoEfyStageConfig, name: str) -> None:
    mcfg = cfg.build()
    dense = _evaluate(ctx, cfg)
    before = stage_cost(ctx.model, cfg)
    batches = stage_calibration_batches(ctx, cfg.calib_samples, cfg.calib_batch_size) if mcfg.needs_batches() else None
    t0 = time.perf_counter()
    summary = moefy_(ctx.model, mcfg, batches=batches)
    metrics = {**summary, "top_k": mcfg.top_k, "threshold": mcfg.threshold, "clustering": mcfg.clustering,
               "router_kind": mcfg.router, "moefy_seconds": time.perf_counter() - t0,
               "calib_examples": sum(len(b["input_ids"]) for b in batches or [])}
    reset_expert_counters(ctx.model)
    after = _evaluate(ctx, cfg)
    counts = expert_counters(ctx.model)
    if counts["dense_flops"]:
        metrics["expert_counters"] = counts
        metrics["active_flops_share"] = counts["expert_flops"] / counts["dense_flops"]
    if dense is not None and after is not None:
        from sparseft.train.config import best_metric_for

        key = best_metric_for(ctx.data.task, "auto")[0]
        if dense.get(key) is not None and after.get(key) is not None:
            metrics.update({f"dense_{key}": dense[key], f"{key}_after_moefy": after[key],
                            f"delta_{key}": after[key] - dense[key]})
    after_cost = stage_cost(ctx.model, cfg)
    if before and after_cost:
        metrics["cost_before"], metrics["cost_after"] = before, after_cost
        metrics["throughput_speedup_b32"] = after_cost["throughput_seq_s_b32"] / before["throughput_seq_s_b32"]
        metrics["latency_speedup_b1"] = before["latency_ms_b1"] / after_cost["latency_ms_b1"]
    ctx.report.log(name, metrics)
    ctx.state[f"{name}_moefy"] = {"config": mcfg, "report": metrics}
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(cfg.output_dir) / "experts.json", metrics)
    save_config(mcfg, cfg.output_dir, "sparseft_moefy.json")


register_method(kind="stage", name="moefy", config_cls=MoEfyStageConfig, apply_fn=moefy_stage,
                description="MoEfication: split FFNs into routed experts, with baseline, delta, expert FLOPs, cost")


@dataclass
class UpcycleStageConfig(TrainConfig):
    """Every TrainConfig field, plus:

    Args:
        num_experts / top_k / aux_loss_coef / router_init_std: UpcycleConfig fields.
        upcycle_targets / upcycle_ignore: which FFN blocks (UpcycleConfig targets / ignore).
        finetune: fine-tune after upcycling (false: only convert).
    """

    num_experts: int = 4
    top_k: int = 2
    aux_loss_coef: float = 0.01
    router_init_std: float = 0.02
    upcycle_targets: list[str] = field(default_factory=lambda: ["re:."])
    upcycle_ignore: list[str] = field(default_factory=list)
    finetune: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.build()

    def build(self) -> UpcycleConfig:
        return UpcycleConfig(num_experts=self.num_experts, top_k=self.top_k, aux_loss_coef=self.aux_loss_coef,
                             router_init_std=self.router_init_std, seed=self.seed, targets=self.upcycle_targets,
                             ignore=self.upcycle_ignore)

    def train_config(self) -> TrainConfig:
        from dataclasses import fields

        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})


def _logits(model, batch: dict | None):
    """The model's logits on a batch in eval mode (None without a batch)."""
    import torch

    if batch is None:
        return None
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def upcycle_stage(ctx, cfg: UpcycleStageConfig, name: str) -> None:
    from sparseft.eval.evaluate import evaluate
    from sparseft.experts.upcycle import AuxLoss
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import best_metric_for
    from sparseft.train.loop import default_loss, train

    ucfg = cfg.build()
    model, data = ctx.model, ctx.data
    probe = stage_calibration_batches(ctx, 4, 4)[0] if data is not None and data.train else None
    dense_out = _logits(model, probe)
    metrics = {**moefy_(model, ucfg), "aux_loss_coef": ucfg.aux_loss_coef}
    if probe is not None:     # identical experts, renormalised top-k weights: the dense function
        metrics["init_max_abs_diff"] = float((_logits(model, probe) - dense_out).abs().max())
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.finetune:
        if data is None or not data.train:
            raise ValueError("stage upcycle: finetune needs training data (data.train), or set finetune: false")
        aux = AuxLoss(ucfg.aux_loss_coef, log_path=out / "aux_loss.jsonl")
        metric = best_metric_for(data.task, cfg.metric_for_best)

        def eval_fn(m):
            return evaluate(m, data, pad_id=ctx.pad_id, batch_size=cfg.eval_batch_size)

        result = train(model, data.train, cfg.train_config(), collate_fn=PadCollator(ctx.pad_id),
                       eval_fn=eval_fn if data.eval else None, metric=metric, loss_fn=aux.wrap(default_loss),
                       post_step=[aux.post_step])
        values = [r["aux_loss"] for r in aux.history]
        metrics.update({"steps": result.steps, "train_seconds": result.train_seconds,
                        f"best_{result.metric_name}": result.best_metric, "best_step": result.best_step,
                        "aux_loss_first": values[0] if values else None, "aux_loss_last": values[-1] if values else None,
                        "aux_loss_mean": sum(values) / len(values) if values else None})
        ctx.state[name] = result
    ctx.report.log(name, metrics)
    atomic_write_json(out / "upcycle.json", metrics)
    save_config(ucfg, out, "sparseft_upcycle.json")


register_method(kind="stage", name="upcycle", config_cls=UpcycleStageConfig, apply_fn=upcycle_stage,
                description="sparse upcycling: copy FFNs into top-k routed experts, fine-tune with the aux loss logged")

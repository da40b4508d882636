"""Recipe stage `moefy`: split the model's FFNs into routed experts (MoEfication), scored before/after.

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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sparseft.compress.calibration import check_calibration, stage_calibration_batches
from sparseft.config.base import BaseConfig, save_config
from sparseft.eval.cost import stage_cost
from sparseft.experts.api import moefy_
from sparseft.experts.config import MoEfyConfig
from sparseft.experts.layer import expert_counters, reset_expert_counters
from sparseft.registry import register_method
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

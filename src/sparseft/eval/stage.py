"""Recipe stage `eval`: task metrics on the eval split (or another file) and, optionally, cost."""

from __future__ import annotations

from dataclasses import dataclass

from sparseft.config.base import BaseConfig
from sparseft.eval.cost import measure_cost
from sparseft.eval.evaluate import evaluate
from sparseft.registry import register_method


@dataclass
class EvalConfig(BaseConfig):
    """Args:
        file: evaluate on this file instead of the recipe's eval split (labels must be known).
        batch_size: eval batch size.
        cost: also measure parameters, size on disk, CPU latency (batch 1) and throughput (batch 32).
        seq_len / repeats: timing protocol for the cost measurement.
    """

    file: str = ""
    batch_size: int = 64
    cost: bool = True
    seq_len: int = 64
    repeats: int = 10

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.seq_len < 1 or self.repeats < 1:
            raise ValueError("batch_size, seq_len and repeats must be >= 1")


def eval_stage(ctx, cfg: EvalConfig, name: str) -> None:
    data = ctx.data
    if cfg.file:
        from sparseft.load.data import build_eval_data

        data = build_eval_data(ctx.recipe.data, ctx.tokenizer, data.labels, cfg.file)
    metrics = evaluate(ctx.model, data, pad_id=ctx.pad_id, batch_size=cfg.batch_size)
    ctx.state[name] = metrics
    ctx.report.log(name, metrics)
    if cfg.cost:
        ctx.report.log(name, {"cost": measure_cost(ctx.model, seq_len=cfg.seq_len, repeats=cfg.repeats)})


register_method(kind="stage", name="eval", config_cls=EvalConfig, apply_fn=eval_stage,
                description="task metrics and model cost")

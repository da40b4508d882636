"""Recipe stage `eval`: task metrics on the eval split (or another file) and, optionally, cost.

With `compare_to: <earlier eval stage>` it also logs the before/after of the headline metric and
of the model's size, which is how every compression verb (prune, quantize, factorize) reports
its deltas:

    stages:
      - {name: before, method: eval, cost: false, size: true}     # the input model
      - {name: prune, method: prune, pruner: wanda}
      - {name: dev, method: eval, cost: false, size: true, compare_to: before}
"""

from __future__ import annotations

from dataclasses import dataclass

from sparseft.config.base import BaseConfig
from sparseft.eval.cost import measure_cost, model_size
from sparseft.eval.evaluate import evaluate
from sparseft.registry import register_method


@dataclass
class EvalConfig(BaseConfig):
    """Args:
        file: evaluate on this file instead of the recipe's eval split (labels must be known).
        batch_size: eval batch size.
        cost: also measure parameters, size on disk, CPU latency (batch 1) and throughput (batch 32).
        seq_len / repeats: timing protocol for the cost measurement.
        size: also log parameters, nonzero parameters and weights_mb (eval/cost.py `model_size`).
        compare_to: name of an earlier eval stage; log the headline metric and the size before
            (that stage), after (this one) and the delta: `<metric>_before`, `<metric>_after`,
            `delta_<metric>`, `weights_mb_before`, ... (also in `ctx.state[name]["before_after"]`).
    """

    file: str = ""
    batch_size: int = 64
    cost: bool = True
    seq_len: int = 64
    repeats: int = 10
    size: bool = False
    compare_to: str = ""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.seq_len < 1 or self.repeats < 1:
            raise ValueError("batch_size, seq_len and repeats must be >= 1")


def eval_stage(ctx, cfg: EvalConfig, name: str) -> None:
    data = ctx.data
    if cfg.file:
        from sparseft.load.data import build_eval_data

        data = build_eval_data(ctx.recipe.data, ctx.tokenizer, data.labels, cfg.file)
    before = ctx.state.get(cfg.compare_to) if cfg.compare_to else None
    if cfg.compare_to and not (isinstance(before, dict) and "size" in before):
        raise ValueError(f"eval stage {name!r}: compare_to={cfg.compare_to!r} names no earlier eval stage "
                         f"with size: true")
    metrics = evaluate(ctx.model, data, pad_id=ctx.pad_id, batch_size=cfg.batch_size)
    if cfg.size or cfg.compare_to:
        metrics["size"] = model_size(ctx.model)
    if before is not None:
        metrics["before_after"] = before_after(data.task, before, metrics)
    ctx.state[name] = metrics
    ctx.report.log(name, {k: v for k, v in metrics.items() if k != "before_after"})
    if before is not None:
        ctx.report.log(name, metrics["before_after"])
    if cfg.cost:
        ctx.report.log(name, {"cost": measure_cost(ctx.model, seq_len=cfg.seq_len, repeats=cfg.repeats)})


def before_after(task: str, before: dict, after: dict) -> dict:
    """Headline metric and size of two evaluations: `<key>_before`, `<key>_after`, `delta_<key>`, ..."""
    from sparseft.train.config import best_metric_for

    key = best_metric_for(task, "auto")[0]
    key = key if key in after else "loss"
    out = {"metric": key}
    pairs = [(key, before.get(key), after.get(key))]
    pairs += [(k, before["size"][k], after["size"][k]) for k in ("weights_mb", "nonzero_params", "params")]
    for k, b, a in pairs:
        out[f"{k}_before"], out[f"{k}_after"] = b, a
        out[f"delta_{k}"] = a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
    return out


register_method(kind="stage", name="eval", config_cls=EvalConfig, apply_fn=eval_stage,
                description="task metrics and model cost")

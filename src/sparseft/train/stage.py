"""Recipe stage `train`: full fine-tuning of the loaded model with the sparseft loop.

Stage fields are TrainConfig fields; `output_dir` defaults to <run dir>/<stage name>.
"""

from __future__ import annotations

from sparseft.eval.evaluate import evaluate
from sparseft.load.tokenize import PadCollator
from sparseft.registry import register_method
from sparseft.train.config import TrainConfig, best_metric_for
from sparseft.train.identity import recipe_inputs
from sparseft.train.loop import train


def train_stage(ctx, cfg: TrainConfig, name: str) -> None:
    data = ctx.data
    collate = PadCollator(ctx.pad_id)

    def eval_fn(model):
        return evaluate(model, data, pad_id=ctx.pad_id, batch_size=cfg.eval_batch_size)

    metric = best_metric_for(data.task, cfg.metric_for_best)
    result = train(ctx.model, data.train, cfg, collate_fn=collate, eval_fn=eval_fn if data.eval else None,
                   metric=metric, inputs=recipe_inputs(ctx.recipe, cfg))
    trainable = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
    ctx.state[name] = result
    ctx.report.log(name, {"steps": result.steps, "train_seconds": result.train_seconds,
                          "seconds_per_step": result.seconds_per_step,
                          "tokens_per_second": result.tokens_per_second,
                          "peak_memory_mb": result.peak_memory_mb, "trainable_params": trainable,
                          f"best_{result.metric_name}": result.best_metric, "best_step": result.best_step,
                          "resumed_from_step": result.resumed_from_step})


register_method(kind="stage", name="train", config_cls=TrainConfig, apply_fn=train_stage,
                description="full fine-tuning with the sparseft loop")

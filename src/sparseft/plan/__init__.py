"""Memory planner: per-device memory of full / sparse / LoRA fine-tuning under DDP, FSDP and ZeRO,
from a model's config alone (`sparseft plan MODEL`; see docs/scaling.md).

    from sparseft.plan import PlanInput, model_shape, plan, format_table
    shape = model_shape("llama-3-8b")
    print(format_table(shape, inp := PlanInput(mode="sparse", density=0.01, devices=8), plan(shape, inp)))
"""

from sparseft.plan.memory import STRATEGIES, PlanInput, PlanRow, format_table, plan, plan_row
from sparseft.plan.shapes import BUNDLED, ModelShape, model_shape

__all__ = ["BUNDLED", "STRATEGIES", "ModelShape", "PlanInput", "PlanRow", "format_table", "model_shape", "plan",
           "plan_row"]

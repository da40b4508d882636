"""TrainConfig: every knob of the training loop, validated where it enters."""

from __future__ import annotations

from dataclasses import dataclass

from sparseft.config.base import BaseConfig, known_config
from sparseft.train.defaults import DEFAULT_LR
from sparseft.train.distributed import BASE_DTYPES, DISTRIBUTED, ZERO_STAGES

PRECISIONS = ("auto", "no", "bf16", "fp16")


@known_config
@dataclass
class TrainConfig(BaseConfig):
    """Args:
        output_dir: where checkpoints, the JSONL log and the best weights go.
        epochs: passes over the training data (ignored when max_steps is set).
        max_steps: total optimizer steps; overrides epochs.
        batch_size: examples per micro-batch per process. grad_accum: micro-batches per step.
        eval_batch_size: examples per evaluation batch.
        lr: peak learning rate (AdamW; linear warm-up, then linear decay to 0). Each method's
            default lives in sparseft/train/defaults.py (DEFAULT_LR).
        weight_decay: AdamW weight decay.
        warmup_ratio: share of the optimizer steps spent in linear warm-up.
        max_grad_norm: clip the global gradient norm (None or 0 disables).
        mixed_precision: 'auto' (bf16 on GPUs that support it; on CPUs bf16 only with native bf16
            units and a faster probed step, else fp32: train/precision.py), 'no', 'bf16' or 'fp16' (GPU only).
        eval_every: 'epoch', 'never', or every N optimizer steps given as an int.
        metric_for_best: metric key to select the best checkpoint ('auto': f1 / accuracy /
            -perplexity by task); greater_is_better is inferred ('loss'/'perplexity' are minimised).
        load_best_at_end: put the best checkpoint's weights back into the model at the end.
        save_every: also checkpoint every N optimizer steps (0: only at epoch ends).
        resume: continue from output_dir/checkpoints/last when it exists; the checkpoint must come
            from the same model, data and config (train/identity.py), else a one-line error.
        log_every: log the training loss every N optimizer steps.
        seed: seeds data order (per epoch), dropout and new heads.
        progress: show a progress bar (main process only).
        group_by_length: batch examples of similar length together (less padding, faster).
        distributed: 'ddp' (whole model per process), 'fsdp' (FSDP2 fully_shard: parameters,
            gradients and optimizer state sharded) or 'deepspeed' (ZeRO `zero_stage`); see
            train/distributed.py and docs/scaling.md.
        zero_stage: DeepSpeed ZeRO stage 1, 2 or 3 (distributed='deepspeed' only).
        offload: CPU offload (deepspeed: optimizer state, + parameters at stage 3; fsdp: shards, GPU only).
        gradient_checkpointing: recompute activations in backward (less memory, ~30% more compute).
        base_dtype: dtype of the frozen weights ('fp32', 'bf16', 'fp16'); trainable tensors (sparse
            values, LoRA, heads) stay fp32. Full fine-tuning has no frozen weights: the whole model is cast.
            A 16-bit base computes in that dtype: mixed_precision 'auto' becomes it (others must match).
    """

    output_dir: str = "runs/train"
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_accum: int = 1
    lr: float = DEFAULT_LR["train"]
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "auto"
    eval_every: str | int = "epoch"
    metric_for_best: str = "auto"
    load_best_at_end: bool = True
    save_every: int = 0
    resume: bool = True
    log_every: int = 10
    seed: int = 42
    progress: bool = True
    group_by_length: bool = True
    distributed: str = "ddp"
    zero_stage: int = 2
    offload: bool = False
    gradient_checkpointing: bool = False
    base_dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.epochs < 1 and not self.max_steps:
            raise ValueError(f"epochs must be >= 1 (or set max_steps), got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        for name in ("batch_size", "eval_batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if isinstance(self.eval_every, str) and self.eval_every not in ("epoch", "never"):
            if self.eval_every.isdigit():
                self.eval_every = int(self.eval_every)
            else:
                raise ValueError(f"eval_every must be 'epoch', 'never' or a step count, got {self.eval_every!r}")
        if isinstance(self.eval_every, int) and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1 steps, got {self.eval_every}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {self.save_every}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}")
        if self.zero_stage not in ZERO_STAGES:
            raise ValueError(f"zero_stage must be one of {ZERO_STAGES}, got {self.zero_stage}")
        if self.offload and self.distributed == "ddp":
            raise ValueError("offload needs distributed='deepspeed' (ZeRO offload) or 'fsdp' (GPU only)")
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"base_dtype must be one of {tuple(BASE_DTYPES)}, got {self.base_dtype!r}")
        if self.base_dtype != "fp32":  # 16-bit frozen weights compute in 16 bits (autocast the fp32 heads)
            if self.mixed_precision == "auto":
                self.mixed_precision = self.base_dtype
            elif self.mixed_precision != self.base_dtype:
                raise ValueError(f"base_dtype={self.base_dtype!r} computes in {self.base_dtype}: mixed_precision must "
                                 f"be 'auto' or {self.base_dtype!r}, got {self.mixed_precision!r}")


def best_metric_for(task: str, metric: str) -> tuple[str, bool]:
    """(metric key, greater_is_better) for a task; 'auto' picks the task's headline metric."""
    if metric == "auto":
        metric = {"ner": "f1", "cls": "accuracy", "lm": "perplexity"}.get(task, "loss")
    lower = metric in ("loss", "perplexity") or metric.endswith(("_loss", "perplexity"))
    return metric, not lower

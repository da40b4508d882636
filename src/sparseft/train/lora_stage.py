"""Recipe stage `lora`: peft LoRA on a task model (NER, classification, LM), the baseline that
sparse fine-tuning is compared with at the same number of trainable parameters.

    - name: finetune
      method: lora
      rank_for_density: 0.01  # the rank whose LoRA count is closest to 1% of the targeted weights
      # rank: 8               # ... or a fixed rank
      alpha: null             # null: 2 * rank
      epochs: 3
      lr: 1.0e-3              # + every other TrainConfig field

Targets are chosen as for sparse fine-tuning's masks (`targets` + `ignore`, default every
`nn.Linear` except task heads and `lm_head`), so "the same trainable count" compares like with
like. A rank-r adapter on an [out, in] weight trains r * (in + out) parameters. The new task head
(classifier / score / qa_outputs) trains densely (peft `modules_to_save`) and is counted in
`trainable_params`, as sparse fine-tuning counts its dense heads.

The adapter (adapter_config.json + adapter_model.safetensors: what LoRA ships) goes to
`adapter_dir` (default <stage dir>/adapter); with `merge: true` (default) it is then merged and the
run continues with a plain transformers model, every parameter trainable again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sparseft.config.base import known_config
from sparseft.config.targets import TargetSpec, matches, select_modules
from sparseft.masks.config import DEFAULT_HEADS, DEFAULT_IGNORE
from sparseft.registry import register_method
from sparseft.train.config import TrainConfig, best_metric_for
from sparseft.train.defaults import DEFAULT_LR, HEAD_WARMUP_LR
from sparseft.train.head_warmup import check_head_warmup, dense_head_parameters, head_warmup_, warmup_steps
from sparseft.utils.dist import is_main_process
from sparseft.utils.io import atomic_dir, dir_size_bytes


@known_config
@dataclass
class LoRAStageConfig(TrainConfig):
    """TrainConfig fields plus the adapter. Args:
        lr: peak learning rate; the default is LoRA's (DEFAULT_LR["lora"], sparseft/train/defaults.py).
        rank: LoRA rank (ignored when rank_for_density is set).
        rank_for_density: pick the rank whose trainable count is closest to this fraction of the
            targeted weights' entries (the budget of sparse fine-tuning at that density).
        alpha: LoRA alpha; None means 2 * rank.
        dropout: LoRA dropout.
        targets / ignore: modules that get adapters (module class names, fqn suffixes, "re:...").
        heads: modules trained densely (new task heads), saved with the adapter.
        head_warmup_steps: train only the heads for this many steps before the adapter is added,
            as sparse fine-tuning does (0 = off; None = 300 when the model has a task head, else 0;
            train/head_warmup.py).
        head_warmup_lr: AdamW learning rate of the head warm-up.
        merge: merge the adapter into the model after training.
        adapter_dir: where the adapter is written (default <stage dir>/adapter).
    """

    lr: float = DEFAULT_LR["lora"]
    rank: int = 8
    rank_for_density: float | None = None
    alpha: float | None = None
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORE))
    heads: list[str] = field(default_factory=lambda: list(DEFAULT_HEADS))
    head_warmup_steps: int | None = None
    head_warmup_lr: float = HEAD_WARMUP_LR
    merge: bool = True
    adapter_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.rank_for_density is not None and not 0.0 < self.rank_for_density <= 1.0:
            raise ValueError(f"rank_for_density must be in (0, 1], got {self.rank_for_density}")
        if self.dropout < 0 or self.dropout >= 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        check_head_warmup(self.head_warmup_steps, self.head_warmup_lr)
        self.target_spec()  # validates the patterns where they enter

    def target_spec(self) -> TargetSpec:
        return TargetSpec(list(self.targets), list(dict.fromkeys([*self.ignore, *self.heads])))

    def train_config(self) -> TrainConfig:
        names = TrainConfig.__dataclass_fields__
        return TrainConfig(**{k: v for k, v in vars(self).items() if k in names})


def lora_targets(model: torch.nn.Module, cfg: LoRAStageConfig) -> list[tuple[str, torch.nn.Linear]]:
    """[(fqn, Linear)] that get adapters; other module types matched by `targets` are an error."""
    chosen = select_modules(model, cfg.target_spec())
    bad = [fqn for fqn, m in chosen if not isinstance(m, torch.nn.Linear)]
    if bad:
        raise ValueError(f"lora targets must be nn.Linear modules; {bad[:3]} are not (set `targets`)")
    return chosen


def choose_rank(targets: list[tuple[str, torch.nn.Linear]], cfg: LoRAStageConfig) -> tuple[int, int | None]:
    """(rank, matched count): the fixed rank, or the one closest to rank_for_density's count."""
    if cfg.rank_for_density is None:
        return cfg.rank, None
    per_rank = sum(m.in_features + m.out_features for _, m in targets)      # LoRA params at r = 1
    count = round(cfg.rank_for_density * sum(m.weight.numel() for _, m in targets))
    return max(1, round(count / per_rank)), count


def present_heads(model: torch.nn.Module, heads: list[str]) -> list[str]:
    """The head patterns that name a module of `model` (peft `modules_to_save` wants names)."""
    mods = [(fqn, m) for fqn, m in model.named_modules() if fqn]
    return [h for h in heads if any(matches(h, fqn, m) for fqn, m in mods)]


def lora_stage(ctx, cfg: LoRAStageConfig, name: str) -> None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("stage 'lora' needs peft: pip install 'sparseft[lora]' (or pip install peft)") from None
    from sparseft.eval.evaluate import evaluate
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.loop import default_loss, train

    data = ctx.data
    targets = lora_targets(ctx.model, cfg)
    rank, matched = choose_rank(targets, cfg)
    heads = present_heads(ctx.model, cfg.heads)
    head_params = dense_head_parameters(ctx.model, heads)  # probed first; modules_to_save copies them
    warmup = head_warmup_(ctx.model, head_params, data.train, cfg.train_config(), PadCollator(ctx.pad_id),
                          steps=warmup_steps(cfg.head_warmup_steps, head_params), lr=cfg.head_warmup_lr,
                          loss_fn=default_loss)
    alpha = cfg.alpha if cfg.alpha is not None else 2.0 * rank
    peft_cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=cfg.dropout, bias="none",
                          target_modules=[fqn for fqn, _ in targets], modules_to_save=heads or None)
    model = get_peft_model(ctx.model, peft_cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def eval_fn(m):
        return evaluate(m, data, pad_id=ctx.pad_id, batch_size=cfg.eval_batch_size)

    result = train(model, data.train, cfg.train_config(), collate_fn=PadCollator(ctx.pad_id),
                   eval_fn=eval_fn if data.eval else None, metric=best_metric_for(data.task, cfg.metric_for_best))
    path = Path(cfg.adapter_dir or Path(cfg.output_dir) / "adapter")
    if is_main_process():
        with atomic_dir(path) as tmp:
            model.save_pretrained(tmp)
    if cfg.merge:
        ctx.model = model.merge_and_unload()
        for p in ctx.model.parameters():  # a plain model again, for the stages after this one
            p.requires_grad_(True)
    else:
        ctx.model = model
    ctx.state[name] = result
    metrics = {"rank": rank, "alpha": alpha, "lora_layers": len(targets), "dense_heads": heads,
               "trainable_params": trainable, "adapter_path": str(path),
               "adapter_size_mb": dir_size_bytes(path) / 2**20 if path.exists() else None,
               "steps": result.steps, "train_seconds": result.train_seconds,
               "seconds_per_step": result.seconds_per_step, "tokens_per_second": result.tokens_per_second,
               "peak_memory_mb": result.peak_memory_mb, f"best_{result.metric_name}": result.best_metric,
               "best_step": result.best_step}
    if matched is not None:
        metrics["matched_count"] = matched
    if warmup:
        metrics["head_warmup"] = warmup
    ctx.report.log(name, metrics)


register_method(kind="stage", name="lora", config_cls=LoRAStageConfig, apply_fn=lora_stage,
                description="peft LoRA on the task model (adapter in <stage dir>/adapter, merged by default)")

"""Recipe stage `sft`: sparse fine-tuning of the loaded model; writes the diff, leaves the
merged model in the run context (a following `save` stage writes it as a plain checkpoint).

    # sparseft run recipe.yaml            (or: sparseft train ... --method sft --mask fisher --density 0.01)
    stages:
      - name: finetune
        method: sft
        mask: fisher            # random | magnitude | fisher | lottery | regrow | spiel_ag | spiel_ma | snr
        density: 0.01           # or count: 100000, or match_lora_rank: 8
        allocation: global      # or per_tensor
        dense_parts: bias,norm  # optional: BitFit-style dense biases / norms, counted in the budget
        mask_options: {n_batches: 64}
        epochs: 3               # ... and every other TrainConfig field
      - {name: dev, method: eval}
      - {name: save, method: save}

The diff goes to `diff_dir` (default `<run dir>/diff`); checkpoints and the selected masks to the
stage's `output_dir` (default `<run dir>/<stage name>`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sparseft.config.base import known_config
from sparseft.eval.evaluate import evaluate
from sparseft.export.sparse_diff import save_diff
from sparseft.load.tokenize import PadCollator
from sparseft.masks.config import DEFAULT_HEADS, DEFAULT_MASK, MaskConfig
from sparseft.masks.select import mask_config
from sparseft.registry import register_method
from sparseft.sft.api import sparse_finetune
from sparseft.sft.dense_parts import parse_dense_parts
from sparseft.train.config import TrainConfig, best_metric_for
from sparseft.train.defaults import DEFAULT_LR, HEAD_WARMUP_LR
from sparseft.train.head_warmup import check_head_warmup
from sparseft.train.identity import recipe_inputs
from sparseft.utils.dist import is_main_process
from sparseft.utils.io import dir_size_bytes


@known_config
@dataclass
class SFTConfig(TrainConfig):
    """TrainConfig fields plus the mask. Args:
        lr: peak learning rate; the default is sparse fine-tuning's (DEFAULT_LR["sft"],
            sparseft/train/defaults.py).
        mask: registered mask method (random, magnitude, fisher, lottery, regrow, spiel_ag, spiel_ma,
            snr).
        density / count / match_lora_rank: the budget (at most one; default density 0.01).
        allocation: "global" or "per_tensor".
        targets / ignore: module patterns (None: the mask config's defaults, Linear minus heads).
        heads: modules trained densely and stored densely in the diff (new task heads).
        dense_parts: base parameters trained densely beside the sparse entries, counted in the
            budget: "" (none), "bias", "norm" or "bias,norm" (BitFit-style; sft/dense_parts.py).
        head_warmup_steps: train only the heads for this many steps before the mask is selected
            (a linear probe; 0 = off; None = 300 when the model has a task head, else 0;
            train/head_warmup.py).
        head_warmup_lr: AdamW learning rate of the head warm-up.
        mask_options: extra fields of the mask method's config, e.g. {n_batches: 64}.
        diff_dir: where the diff is written (default <run dir>/diff).
    """

    lr: float = DEFAULT_LR["sft"]
    mask: str = DEFAULT_MASK
    density: float | None = None
    count: int | None = None
    match_lora_rank: int | None = None
    allocation: str = "global"
    targets: list[str] | None = None
    ignore: list[str] | None = None
    heads: list[str] = field(default_factory=lambda: list(DEFAULT_HEADS))
    dense_parts: str = ""
    head_warmup_steps: int | None = None
    head_warmup_lr: float = HEAD_WARMUP_LR
    mask_options: dict = field(default_factory=dict)
    diff_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mask_config()  # validate the mask part where it enters
        parse_dense_parts(self.dense_parts)
        check_head_warmup(self.head_warmup_steps, self.head_warmup_lr)

    def mask_config(self) -> MaskConfig:
        fields = {"density": self.density, "count": self.count, "match_lora_rank": self.match_lora_rank,
                  "allocation": self.allocation, **self.mask_options}
        if self.targets is not None:
            fields["targets"] = self.targets
        if self.ignore is not None:
            fields["ignore"] = self.ignore
        return mask_config(self.mask, **fields)

    def train_config(self) -> TrainConfig:
        names = TrainConfig.__dataclass_fields__
        return TrainConfig(**{k: v for k, v in vars(self).items() if k in names})


def sft_stage(ctx, cfg: SFTConfig, name: str) -> None:
    data = ctx.data
    train_cfg = cfg.train_config()

    def eval_fn(model):
        return evaluate(model, data, pad_id=ctx.pad_id, batch_size=cfg.eval_batch_size)

    result, diff = sparse_finetune(
        ctx.model, data.train, train_cfg, cfg.mask_config(), collate_fn=PadCollator(ctx.pad_id),
        eval_fn=eval_fn if data.eval else None, metric=best_metric_for(data.task, cfg.metric_for_best),
        base_id=ctx.recipe.model, heads=cfg.heads, dense_parts=parse_dense_parts(cfg.dense_parts),
        head_warmup_steps=cfg.head_warmup_steps, head_warmup_lr=cfg.head_warmup_lr, inputs=recipe_inputs(ctx.recipe, cfg))
    diff.manifest.update({"task": data.task, "labels": data.labels or None, "data": ctx.recipe.data.to_dict()})
    diff_dir = Path(cfg.diff_dir or ctx.output_dir / "diff")
    main = is_main_process()
    if main:  # every rank holds the same diff; two writers race on the folder exchange
        save_diff(diff, diff_dir)
    ctx.state[name] = result
    ctx.state[f"{name}_diff"] = diff
    ctx.report.log(name, {
        "mask": cfg.mask, "selected": diff.count, "density": diff.manifest["density"],
        "dense_head_params": diff.dense_count, "dense_part_params": diff.manifest["dense_part_params"],
        "trainable_params": diff.count + diff.dense_count,
        "diff_path": str(diff_dir), "diff_size_mb": dir_size_bytes(diff_dir) / 2**20 if main else None,
        "steps": result.steps, "train_seconds": result.train_seconds,
        "seconds_per_step": result.seconds_per_step, "tokens_per_second": result.tokens_per_second,
        "peak_memory_mb": result.peak_memory_mb, f"best_{result.metric_name}": result.best_metric,
        "best_step": result.best_step, "resumed_from_step": result.resumed_from_step,
        **({"head_warmup": diff.manifest["head_warmup"]} if "head_warmup" in diff.manifest else {})})


register_method(kind="stage", name="sft", config_cls=SFTConfig, apply_fn=sft_stage,
                description="sparse fine-tuning: mask + O(k) training + sparse diff (<run>/diff)")

"""Recipe stage `export`: write the run's model as a compressed checkpoint (export/compressed.py).

    - {name: export, method: export, format: compressed, sparse: auto}

Logs the size on disk against fp32, and with `check: true` reloads the folder and checks that
the reloaded model predicts what the in-memory model predicts on the first eval examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseft.config.base import BaseConfig
from sparseft.export.compressed import FLOAT_DTYPES, SPARSE_MODES, export_compressed, load_compressed
from sparseft.registry import register_method
from sparseft.utils.io import atomic_write_json
from sparseft.utils.outdir import check_output_dir

FORMATS = ("compressed",)


@dataclass
class ExportConfig(BaseConfig):
    """Args:
        format: 'compressed' (bitmask sparse + packed quantized tensors; plain folders: stage `save`).
        path: target folder (default <run dir>/compressed).
        sparse: 'auto', 'always' or 'never' (bitmask storage of 2-D tensors).
        float_dtype: 'keep', 'float16' or 'bfloat16' for the tensors that are not quantized.
        check: reload and compare predictions on up to `check_examples` eval examples.
    """

    format: str = "compressed"
    path: str = ""
    sparse: str = "auto"
    float_dtype: str = "keep"
    check: bool = True
    check_examples: int = 32

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r} (use stage 'save' for a "
                             f"plain save_pretrained folder)")
        if self.sparse not in SPARSE_MODES:
            raise ValueError(f"sparse must be one of {SPARSE_MODES}, got {self.sparse!r}")
        if self.float_dtype not in FLOAT_DTYPES:
            raise ValueError(f"float_dtype must be one of {tuple(FLOAT_DTYPES)}, got {self.float_dtype!r}")
        if self.check_examples < 1:
            raise ValueError(f"check_examples must be >= 1, got {self.check_examples}")


@torch.no_grad()
def prediction_agreement(model_a, model_b, feats: list[dict], pad_id: int) -> dict:
    """Share of positions where both models' argmax agree, and the largest logit difference."""
    from sparseft.load.tokenize import PadCollator

    batch = PadCollator(pad_id)(feats)
    batch.pop("labels", None)
    la, lb = model_a(**batch).logits.float(), model_b(**batch).logits.float()
    keep = batch["attention_mask"].bool() if la.ndim == 3 else torch.ones(la.shape[0], dtype=torch.bool)
    same = (la.argmax(-1) == lb.argmax(-1))[keep]
    return {"agreement": float(same.float().mean()), "max_abs_logit_diff": float((la - lb).abs().max())}


def export_stage(ctx, cfg: ExportConfig, name: str) -> None:
    path = cfg.path or str(ctx.output_dir / "compressed")
    check_output_dir(path, overwrite=ctx.overwrite, inputs=[ctx.recipe.model], replace=True)
    stats = export_compressed(ctx.model, path, tokenizer=ctx.tokenizer, sparse=cfg.sparse,
                              float_dtype=cfg.float_dtype, overwrite=ctx.overwrite)
    atomic_write_json(f"{path}/sparseft_data.json", ctx.recipe.data.to_dict())
    metrics = {"path": path, "size_mb": stats["weights_bytes"] / 2**20, "fp32_mb": stats["fp32_bytes"] / 2**20,
               "compression_ratio": stats["compression_ratio"], "global_sparsity": stats["global_sparsity"],
               "sparse_tensors": stats["sparse_tensors"], "quantized_modules": stats["quantized_modules"]}
    feats = (ctx.data.eval if ctx.data is not None else [])[:cfg.check_examples]
    if cfg.check and feats:
        was_training = ctx.model.training
        ctx.model.eval()
        metrics["reload"] = prediction_agreement(ctx.model, load_compressed(path), feats, ctx.pad_id)
        ctx.model.train(was_training)
    ctx.state[name] = metrics
    ctx.report.log(name, metrics)


register_method(kind="stage", name="export", config_cls=ExportConfig, apply_fn=export_stage,
                description="compressed checkpoint: bitmask sparse + packed quantized weights")

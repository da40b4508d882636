"""Recipe stage `save`: write the current model as a save_pretrained folder plus its configs."""

from __future__ import annotations

from dataclasses import dataclass

from sparseft.config.base import BaseConfig
from sparseft.export.save import save_artifact
from sparseft.registry import register_method
from sparseft.utils.dist import is_main_process
from sparseft.utils.io import dir_size_bytes
from sparseft.utils.outdir import check_output_dir


@dataclass
class SaveConfig(BaseConfig):
    """Args:
        path: target folder (default <run dir>/model).
    """

    path: str = ""


def save_stage(ctx, cfg: SaveConfig, name: str) -> None:
    path = cfg.path or str(ctx.output_dir / "model")
    if not is_main_process():  # under multi-process launches only rank 0 writes
        return
    check_output_dir(path, overwrite=ctx.overwrite, inputs=[ctx.recipe.model], replace=True)
    save_artifact(ctx.model, ctx.tokenizer, path, configs={"data": ctx.recipe.data},
                  recipe_yaml=ctx.recipe.to_yaml(), overwrite=ctx.overwrite)
    ctx.report.log(name, {"path": path, "size_mb": dir_size_bytes(path) / 2**20})


register_method(kind="stage", name="save", config_cls=SaveConfig, apply_fn=save_stage,
                description="save_pretrained folder + configs")

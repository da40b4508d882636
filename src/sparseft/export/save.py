"""Save a model artifact: a `save_pretrained` folder that plain transformers loads, plus the
sparseft configs that produced it (`sparseft_*.json`) and the recipe, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparseft.config.base import BaseConfig, save_config
from sparseft.utils.io import atomic_write_json
from sparseft.utils.outdir import replace_dir


def save_artifact(model, tokenizer, directory: str | Path, *, configs: dict[str, Any] | None = None,
                  recipe_yaml: str | None = None, overwrite: bool = False, owner: str | None = None) -> Path:
    """Write model + tokenizer + configs into `directory` (replaced as a whole on success).

    Args:
        configs: name -> BaseConfig or plain dict, saved as `sparseft_<name>.json`.
        recipe_yaml: the recipe text, saved as `sparseft_recipe.yaml`.
        overwrite / owner: see `sparseft.utils.outdir` (a non-empty folder sparseft did not
            write is refused unless overwrite=True).
    """
    directory = Path(directory)
    with replace_dir(directory, owner=owner, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if hasattr(model, "config"):  # README.md: how this folder loads (docs/artifacts.md)
            from sparseft.export.artifact_cards import write_folder_card
            from sparseft.utils.swaps import swapped_modules

            write_folder_card(tmp, model, layout="modules" if swapped_modules(model) else "plain",
                              where=str(directory))
        for name, cfg in (configs or {}).items():
            if isinstance(cfg, BaseConfig):
                save_config(cfg, tmp, f"sparseft_{name}.json")
            else:
                atomic_write_json(tmp / f"sparseft_{name}.json", cfg)
        if recipe_yaml:
            (tmp / "sparseft_recipe.yaml").write_text(recipe_yaml)
    return directory

"""The three chat SFT modes on one model: full, sparse (sparseft.sft engine), LoRA (peft).

  full    every parameter trains; `train()` from sparseft.train.loop.
  sparse  `sparseft.sft.sparse_finetune` trains a masked subset (mask method + density) and
          returns a SparseDiff (values + positions) that is saved next to the run.
  lora    peft LoRA adapters on the Linear layers whose name contains `lora_module_name`
          (DeepSpeed-Chat's --lora_module_name / --lora_dim semantics), everything else frozen.

`lora_rank_for_count` picks the LoRA rank whose trainable count is closest to a target, so LoRA
and sparse fine-tuning can be compared at the same number of trainable parameters.
"""

from __future__ import annotations

from typing import Any

import torch

from sparseft.config.targets import TargetSpec, select_modules

MODES = ("full", "sparse", "lora")


def lora_target_names(model: torch.nn.Module, module_name: str) -> list[str]:
    """Fully qualified names of the nn.Linear modules whose name contains `module_name`.

    `lm_head` is never a LoRA target (DeepSpeed-Chat only converts decoder layers).
    """
    chosen = select_modules(model, TargetSpec(targets=["Linear"], ignore=["re:(^|\\.)lm_head$"]),
                            filter_fn=lambda m, fqn: module_name in fqn, require_match=False)
    if not chosen:
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:6]
        raise ValueError(f"lora_module_name {module_name!r} matches no Linear layer; Linear layers "
                         f"look like {linears}")
    return [fqn for fqn, _ in chosen]


def lora_param_count(model: torch.nn.Module, module_name: str, rank: int) -> int:
    """Trainable parameters of rank-`rank` LoRA on the targeted layers: r * (in + out) each."""
    mods = dict(model.named_modules())
    return sum(rank * (mods[n].in_features + mods[n].out_features) for n in lora_target_names(model, module_name))


def lora_rank_for_count(model: torch.nn.Module, module_name: str, count: int) -> int:
    """The rank (>= 1) whose LoRA trainable count is closest to `count`."""
    per_rank = lora_param_count(model, module_name, 1)
    return max(1, int(round(count / per_rank)))


def apply_lora(model: torch.nn.Module, *, rank: int, alpha: float | None, module_name: str,
               dropout: float = 0.0) -> Any:
    """Wrap `model` in a peft LoRA model (not in place: returns the PeftModel).

    alpha None means alpha = rank (scaling 1, as DeepSpeed-Chat's default lora_scaling=1).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("mode 'lora' needs peft: pip install 'sparseft[lora]' (or pip install peft)") from None
    targets = lora_target_names(model, module_name)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def mask_config(method: str, density: float, options: dict | None = None) -> Any:
    """Build the registered mask config (`kind="mask"`) for sparse fine-tuning."""
    import sparseft.methods  # noqa: F401  fills the registry with every mask method
    from sparseft.registry import get_method

    cls = get_method("mask", method).config_cls
    return cls(density=density, **(options or {}))


def run_sparse(model, train_data, train_cfg, mask_cfg, *, collate_fn, eval_fn, loss_fn, base_id: str,
               inputs: dict | None = None):
    """Sparse fine-tuning through the engine; returns (TrainResult, SparseDiff)."""
    try:
        from sparseft.sft import sparse_finetune
    except ImportError as exc:
        raise ValueError(f"mode 'sparse' needs the sparse fine-tuning engine (sparseft.sft), which "
                         f"could not be imported: {exc}") from None
    return sparse_finetune(model, train_data, train_cfg, mask_cfg, collate_fn=collate_fn, eval_fn=eval_fn,
                           metric=("loss", False), loss_fn=loss_fn, base_id=base_id, inputs=inputs)


def trainable_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

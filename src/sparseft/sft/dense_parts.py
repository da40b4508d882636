"""Small dense parts trained alongside the sparse entries (BitFit-style), counted in the budget.

    SFTConfig(mask="fisher", density=0.01, dense_parts="bias,norm")
    sparseft train --method sft --density 0.01 --dense-parts bias,norm

`dense_parts` names which small parameters of the *base* model train densely next to the
selected entries:

  * `bias`: every parameter called `bias` (Linear, LayerNorm, ... outside the task heads),
  * `norm`: every parameter of a normalisation module (class name containing "Norm":
    LayerNorm, RMSNorm).

They are counted in the budget: the sparse selection gets the budget minus their count (an
error if nothing is left), so `density=0.01` still means 1% of the targeted weights' entries
trained in total. In the diff they are stored like sparse entries covering every position
(indices, deltas and their base values), so applying, reverting, composing and the base check
treat them exactly as the sparse weights; unlike new task heads (`heads`), they are part of the
base model.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseft.masks.config import MaskConfig
from sparseft.masks.select import budget_quotas, target_parameters

DENSE_PARTS = ("bias", "norm")


def parse_dense_parts(value: str) -> list[str]:
    """"bias,norm" -> ["bias", "norm"]; "" -> []; unknown names are a one-line error."""
    parts = [p.strip() for p in value.split(",") if p.strip()] if value else []
    bad = [p for p in parts if p not in DENSE_PARTS]
    if bad:
        raise ValueError(f"dense_parts: unknown part(s) {bad}; choose from {list(DENSE_PARTS)}, comma-separated")
    return list(dict.fromkeys(parts))


def dense_part_parameters(model: nn.Module, parts: list[str], skip: set[str]) -> dict[str, nn.Parameter]:
    """{param fqn: parameter} of the named parts, in model order, without the `skip` names (heads)."""
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        is_norm = "Norm" in type(module).__name__
        for pname, p in module.named_parameters(recurse=False):
            fqn = f"{mod_name}.{pname}" if mod_name else pname
            wanted = ("bias" in parts and pname == "bias") or ("norm" in parts and is_norm)
            if wanted and fqn not in skip and id(p) not in seen:
                out[fqn] = p
                seen.add(id(p))
    return out


def reduce_budget(model: nn.Module, mask_cfg: MaskConfig, n_dense: int) -> MaskConfig:
    """The mask config with an explicit `count` = its budget minus the `n_dense` dense entries."""
    if n_dense == 0:
        return mask_cfg
    quotas = budget_quotas(target_parameters(model, mask_cfg), mask_cfg)
    total = sum(quotas.values()) if isinstance(quotas, dict) else quotas
    if n_dense >= total:
        raise ValueError(f"dense_parts: the {n_dense:,} dense parameters use up the whole budget of {total:,} "
                         f"entries; raise the budget (density / count / match_lora_rank) or drop dense_parts")
    return mask_cfg.replace(density=None, match_lora_rank=None, count=total - n_dense)


def snapshot(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Copies of the parts' base values (W0) before training."""
    return {n: p.detach().clone() for n, p in params.items()}


def restore_(params: dict[str, nn.Parameter], base: dict[str, torch.Tensor]) -> None:
    """Put the base values back (a failed run leaves the base model as it was)."""
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(base[n])


@torch.no_grad()
def full_entries_(params: dict[str, nn.Parameter], base: dict[str, torch.Tensor]):
    """(indices, fp32 deltas, base values, shapes) covering every position of each part, for the
    diff. Each part is set to W0 + delta exactly as `apply_diff_` computes it, so the trained
    model and base + diff are bit-identical."""
    indices, values, base_values, shapes = {}, {}, {}, {}
    for n, p in params.items():
        w0 = base[n].reshape(-1).cpu()
        delta = p.detach().reshape(-1).cpu().float() - w0.float()
        idx = torch.arange(w0.numel(), dtype=torch.long)
        merged = w0.clone().index_add_(0, idx, delta.to(w0.dtype))
        p.copy_(merged.reshape(p.shape).to(p.device))
        indices[n], values[n], base_values[n], shapes[n] = idx, delta, w0, tuple(p.shape)
    return indices, values, base_values, shapes

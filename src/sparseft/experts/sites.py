"""Find a transformers model's FFN blocks and read their dense weights; swap experts in.

Two shapes of FFN, recognised by structure (no per-family code):
  * BERT-style: a layer with `intermediate.dense` (+ `intermediate_act_fn`) and `output.dense`.
    The block is `<layer>.intermediate`; the experts replace it and `output.dense` becomes a
    pass-through, so `BertOutput`'s dropout, residual and LayerNorm stay outside the experts.
  * SwiGLU (Llama, Mistral, Qwen2, SmolLM2): a module with `gate_proj`, `up_proj`, `down_proj`;
    the block is that module (`<layer>.mlp`), replaced whole.

The activation is the config's `hidden_act` (the string transformers built the block's act from).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from sparseft.config.targets import TargetSpec, matches


@dataclass
class FFNSite:
    """One FFN block: where it is and its dense weights (views of the model's parameters).

    w_in / w_gate: [d_ff, H]; w_out: [H, d_ff]; b_in: [d_ff] or None; b_out: [H] or None.
    """

    fqn: str
    kind: str                      # "bert" or "gated"
    w_in: torch.Tensor
    w_out: torch.Tensor
    activation: str
    w_gate: torch.Tensor | None = None
    b_in: torch.Tensor | None = None
    b_out: torch.Tensor | None = None
    out_fqn: str | None = None     # BERT: the output.dense that becomes a pass-through

    @property
    def d_ff(self) -> int:
        return self.w_in.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.w_in.shape[1]


def _hidden_act(model: nn.Module) -> str:
    act = getattr(getattr(model, "config", None), "hidden_act", None)
    if not isinstance(act, str):
        raise ValueError(f"{type(model).__name__}: config.hidden_act must name the FFN activation, got {act!r}")
    return act


def _is_linear(module, name: str) -> bool:
    return isinstance(getattr(module, name, None), nn.Linear)


def _site(model: nn.Module, fqn: str, module: nn.Module) -> FFNSite | None:
    """The FFN block at `fqn` (the candidate block module itself), or None."""
    if all(_is_linear(module, n) for n in ("gate_proj", "up_proj", "down_proj")):
        if module.gate_proj.bias is not None or module.up_proj.bias is not None:
            raise ValueError(f"{fqn}: SwiGLU blocks with biased gate/up projections are not supported")
        down = module.down_proj
        return FFNSite(fqn, "gated", module.up_proj.weight, down.weight, _hidden_act(model),
                       w_gate=module.gate_proj.weight, b_out=down.bias)
    parent_name, _, child = fqn.rpartition(".")
    if child != "intermediate" or not _is_linear(module, "dense"):
        return None
    parent = model.get_submodule(parent_name) if parent_name else model
    output = getattr(parent, "output", None)
    if output is None or not _is_linear(output, "dense"):
        return None
    out_fqn = f"{parent_name}.output.dense" if parent_name else "output.dense"
    return FFNSite(fqn, "bert", module.dense.weight, output.dense.weight, _hidden_act(model),
                   b_in=module.dense.bias, b_out=output.dense.bias, out_fqn=out_fqn)


def find_sites(model: nn.Module, targets: list[str], ignore: list[str]) -> list[FFNSite]:
    """The FFN blocks selected by `targets` / `ignore` (patterns on the block's name), in model order.

    Raises ValueError when none is selected (never a silent no-op).
    """
    spec = TargetSpec(targets, ignore)
    sites = []
    for fqn, module in model.named_modules():
        if not fqn or not any(matches(p, fqn, module) for p in spec.targets):
            continue
        if any(matches(p, fqn, module) for p in spec.ignore):
            continue
        site = _site(model, fqn, module)
        if site is not None:
            sites.append(site)
    if not sites:
        raise ValueError(f"targets {spec.targets} (ignore {spec.ignore}) select no FFN block of "
                         f"{type(model).__name__} (BERT intermediate/output or gate/up/down_proj MLPs)")
    return sites


def set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@torch.no_grad()
def capture_inputs(model: nn.Module, fqns: list[str], batches: list[dict], max_tokens: int) -> dict[str, torch.Tensor]:
    """{fqn: [n, H]} the inputs of the named modules on the batches' non-padding tokens (first `max_tokens`).

    Runs the model in eval mode on input_ids / attention_mask only (no labels, no loss).
    """
    seen: dict[str, list[torch.Tensor]] = {f: [] for f in fqns}
    current: dict[str, torch.Tensor] = {}
    hooks = []
    for fqn in fqns:
        def hook(mod, args, kwargs, _fqn=fqn):
            current[_fqn] = (args[0] if args else next(iter(kwargs.values()))).detach()
        hooks.append(model.get_submodule(fqn).register_forward_pre_hook(hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    total = 0
    try:
        for batch in batches:
            if total >= max_tokens:
                break
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            model(input_ids=ids, attention_mask=batch.get("attention_mask"))
            keep = mask.reshape(-1)
            for fqn in fqns:
                x = current.pop(fqn)
                seen[fqn].append(x.reshape(-1, x.shape[-1])[keep])
            total += int(keep.sum())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if total == 0:
        raise ValueError("calibration batches hold no (non-padding) tokens")
    return {f: torch.cat(v)[:max_tokens] for f, v in seen.items()}

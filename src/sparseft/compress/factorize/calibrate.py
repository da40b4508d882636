"""Calibration statistics of the targeted Linear layers' inputs, from one pass of the dense model.

`input_statistics(model, layers, batches, gram=..., absmean=...)` runs the calibration batches
through the (unchanged) model with forward pre-hooks on the targeted layers and accumulates, per
layer, over real tokens only (padding is dropped with the attention mask):

  * gram     X^T X  [in, in], float64  (whitened SVD / SVD-LLM)
  * absmean  mean_t |x_tj|  [in]       (ASVD's activation magnitude)

Consecutive layers that read the very same input tensor object (q/k/v of one block, gate/up of
one MLP) share one statistics object, so a Llama block keeps three Gram matrices, not six. Peak extra memory is
the Gram matrices: sum over distinct inputs of in^2 * 8 bytes.

`row_fisher(model, layers, batches)` sums squared task-loss gradients per output row of each
targeted weight (FWSVD); the batches need labels.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
from tqdm.auto import tqdm


class InputStats:
    """Running X^T X and sum |x| of one layer's inputs."""

    def __init__(self, in_features: int, device, *, gram: bool, absmean: bool) -> None:
        self.gram = torch.zeros(in_features, in_features, dtype=torch.float64, device=device) if gram else None
        self.abssum = torch.zeros(in_features, dtype=torch.float64, device=device) if absmean else None
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:   # x: [n_tokens, in]
        x = x.detach()
        if self.gram is not None:
            xf = x.float()
            self.gram += (xf.T @ xf).double()   # one fp32 GEMM per batch, summed in float64
        if self.abssum is not None:
            self.abssum += x.abs().double().sum(0)
        self.tokens += x.shape[0]

    @property
    def absmean(self) -> torch.Tensor:
        return self.abssum / max(1, self.tokens)


def _inputs(model: nn.Module, batch: dict, device) -> dict:
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    if "use_cache" in inspect.signature(model.forward).parameters:
        inputs["use_cache"] = False
    return inputs


@torch.no_grad()
def input_statistics(model: nn.Module, layers: list[tuple[str, nn.Linear]], batches: list[dict], *,
                     gram: bool, absmean: bool, progress: bool = True) -> dict[str, InputStats]:
    """{fqn: InputStats} for `layers`, accumulated over `batches` (dicts with input_ids ...)."""
    if not batches:
        raise ValueError("calibration needs batches (dicts with input_ids / attention_mask)")
    device = next(model.parameters()).device
    stats: dict[str, InputStats] = {}
    token_mask: list[torch.Tensor | None] = [None]
    last: list = [None, None]           # (input tensor, layer name) of the previous hook call
    handles = []

    def make_hook(name: str, layer: nn.Linear):
        def hook(module, args):
            x = args[0]
            if x is last[0]:             # the same tensor object as the layer before (q/k/v, gate/up)
                stats.setdefault(name, stats[last[1]])
                return
            last[0], last[1] = x, name
            if name not in stats:
                stats[name] = InputStats(layer.in_features, layer.weight.device, gram=gram, absmean=absmean)
            m = token_mask[0]
            flat = x[m] if m is not None and m.shape == x.shape[:2] else x.reshape(-1, x.shape[-1])
            stats[name].add(flat)
        return hook

    for name, layer in layers:
        handles.append(layer.register_forward_pre_hook(make_hook(name, layer)))
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="calibration", disable=not progress, leave=False):
            inputs = _inputs(model, batch, device)
            mask = inputs.get("attention_mask")
            token_mask[0] = mask.bool() if mask is not None else None
            model(**inputs)
            last[0] = last[1] = None     # drop the reference: the batch's tensors can be freed
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n, _ in layers if n not in stats]
    if missing:
        raise ValueError(f"targeted layers {missing[:3]} never ran during calibration; add them to `ignore`")
    return stats


def row_fisher(model: nn.Module, layers: list[tuple[str, nn.Linear]], batches: list[dict]) -> dict[str, torch.Tensor]:
    """{fqn: [out] float64}: sum over batches and input columns of the squared loss gradient."""
    from sparseft.masks.fisher import gradient_scores
    from sparseft.train.loop import default_loss

    if not batches:
        raise ValueError("Fisher-weighted SVD needs task batches with labels")
    if any("labels" not in b for b in batches):
        raise ValueError("Fisher-weighted SVD needs task batches with labels (the task loss's gradients); "
                         "the given batches have no 'labels'")
    params = {f"{name}.weight": layer.weight for name, layer in layers}
    scores = gradient_scores(model, params, batches, len(batches), default_loss)
    return {name: scores[f"{name}.weight"].double().sum(1) for name, _ in layers}

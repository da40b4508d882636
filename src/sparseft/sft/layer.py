"""The sparse parametrisation: W = W0 + scatter(indices, values), with W0 frozen.

`sparsify_(model, masks)` swaps each targeted module for a `SparseDelta` wrapper that holds

    base      the original module (its weight W0 and bias stay frozen and untouched),
    indices   int64 buffer [k]: flat positions in W0 that are tuned (state_dict: resume restores it),
    values    fp32 Parameter [k]: the deltas at those positions (starts at 0),

so gradients and AdamW state are O(k). `merge_sparse_(model)` writes W0[indices] += values into
the base weights in place (`index_add_`: every other entry stays bit-identical to W0) and puts
the plain modules back, so `save_pretrained` writes an ordinary checkpoint. Saved while wrapped
(an HF Trainer checkpoint), the folder records the wrappers in config.json and reloads wrapped
after `import sparseft`; plain transformers refuses it (utils/swaps.py), never loads W0 alone.

Memory (the reason this is a custom autograd Function for nn.Linear rather than a
`torch.nn.utils.parametrize` parametrisation): a parametrisation would compute the dense
W0 + delta and let F.linear save it for backward, one extra dense copy of every targeted weight
alive until backward. `_SparseLinearFn` saves only the input (which plain nn.Linear saves too)
and rebuilds W0 + delta in backward; the dense weight gradient [out, in] exists transiently, one
layer at a time, and only its k selected entries are kept. Other module types (Embedding,
Conv1D, ...) use a generic path (`torch.func.functional_call` with the merged weight), which is
correct but keeps the merged weight for backward.

Regrow support: when `acc_grad` is a dense fp32 tensor (set by `RegrowHook` during its gradient
window), the backward pass adds the dense weight gradient into it (`acc_grad += grad_w`; an
object with `__iadd__` works too: spiel_ma's SM3 row/column accumulators, sft/spiel.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparseft.utils.swaps import add_save_guard, record_swaps_

Masks = dict[str, torch.Tensor]


def merged(weight: torch.Tensor, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """W0 + delta as a new tensor (differentiable in `values`; `weight` is never modified)."""
    flat = weight.detach().reshape(-1).index_add(0, indices, values.to(weight.dtype))
    return flat.view(weight.shape)


class _SparseLinearFn(torch.autograd.Function):
    """y = x @ (W0 + delta)^T + b, saving only x; grad wrt values = dense grad gathered at indices."""

    @staticmethod
    def forward(ctx, x, weight, bias, values, indices, layer):
        ctx.save_for_backward(x, weight, values, indices)
        ctx.layer = layer
        with torch.no_grad():
            w = merged(weight, values, indices)
        return F.linear(x, w, bias)  # autocast (if on) casts x and w like a plain nn.Linear

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, values, indices = ctx.saved_tensors
        grad_x = grad_bias = grad_values = None
        dtype = grad_out.dtype
        g2 = grad_out.reshape(-1, grad_out.shape[-1])                       # [N, out]
        if ctx.needs_input_grad[0]:
            w = merged(weight, values, indices).to(dtype)                   # [out, in], transient
            grad_x = (grad_out @ w).to(x.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = g2.sum(0)
        if ctx.needs_input_grad[3] or ctx.layer.acc_grad is not None:
            grad_w = g2.t() @ x.reshape(-1, x.shape[-1]).to(dtype)          # [out, in], transient
            if ctx.layer.acc_grad is not None:
                ctx.layer.acc_grad += grad_w.float()
            if ctx.needs_input_grad[3]:
                grad_values = grad_w.reshape(-1).index_select(0, indices).to(values.dtype)
        return grad_x, None, grad_bias, grad_values, None, None


class SparseDelta(nn.Module):
    """A frozen module plus trainable deltas at `indices` of its `weight` (see module docstring).

    Args:
        base: the module to wrap (nn.Linear gets the memory-lean path).
        indices: flat int64 positions into `base.weight`, unique.
    """

    def __init__(self, base: nn.Module, indices: torch.Tensor) -> None:
        super().__init__()
        weight = base.weight
        if weight.requires_grad:
            raise ValueError("freeze the base weight before wrapping it (requires_grad=False)")
        self.base = base
        self.register_buffer("indices", indices.to(device=weight.device, dtype=torch.long))
        self.values = nn.Parameter(torch.zeros(indices.numel(), dtype=torch.float32, device=weight.device))
        self.acc_grad: torch.Tensor | None = None  # dense fp32 gradient sum, only while regrow asks
        add_save_guard(self)  # a save_pretrained folder never loads W0 as the tuned weight (utils/swaps.py)

    def swap_spec(self) -> dict:
        """Recorded in config.json (utils/swaps.py): the quantizer re-wraps the base on load."""
        return {"k": int(self.indices.numel())}

    @property
    def weight(self) -> torch.Tensor:
        """W0 (frozen). Code that reads `module.weight` (dtype, device, shape) keeps working."""
        return self.base.weight

    @property
    def bias(self):
        return getattr(self.base, "bias", None)

    def merged_weight(self) -> torch.Tensor:
        return merged(self.base.weight, self.values, self.indices)

    def forward(self, *args, **kwargs):
        if isinstance(self.base, nn.Linear) and not kwargs and len(args) == 1:
            if torch.is_grad_enabled() and (self.values.requires_grad or self.acc_grad is not None):
                return _SparseLinearFn.apply(args[0], self.base.weight, self.base.bias, self.values,
                                             self.indices, self)
            return F.linear(args[0], self.merged_weight(), self.base.bias)
        return torch.func.functional_call(self.base, {"weight": self.merged_weight()}, args, kwargs)

    def extra_repr(self) -> str:
        return f"k={self.indices.numel()}, density={self.indices.numel() / self.base.weight.numel():.4g}"


def _parent(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    parent, _, child = fqn.rpartition(".")
    return (model.get_submodule(parent) if parent else model), child


def sparsify_(model: nn.Module, masks: Masks) -> dict[str, SparseDelta]:
    """Swap every module whose `weight` has a non-empty mask for a `SparseDelta` (in place).

    Args:
        masks: {"<module fqn>.weight": bool tensor of the weight's shape}.

    Returns:
        {weight fqn: wrapper}, for the masks with at least one selected entry (empty ones are
        left alone: with global allocation a tensor can get no budget).
    """
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name in params and tuple(mask.shape) != tuple(params[name].shape):
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight has {tuple(params[name].shape)}")
    return sparsify_indices_(model, {n: torch.nonzero(m.reshape(-1), as_tuple=False).reshape(-1)
                                     for n, m in masks.items()})


def sparsify_indices_(model: nn.Module, indices: dict[str, torch.Tensor]) -> dict[str, SparseDelta]:
    """`sparsify_` from the selected positions themselves: {"<module fqn>.weight": sorted unique
    int64 flat indices [k]} (what sharded selection and the saved masks hold; no bool mask of
    the weight's size is built). Empty index tensors are skipped; returns {weight fqn: wrapper}."""
    layers: dict[str, SparseDelta] = {}
    for name, idx in indices.items():
        module_fqn, _, pname = name.rpartition(".")
        if pname != "weight":
            raise ValueError(f"sparse fine-tuning targets module weights; got mask for {name!r}")
        module = model.get_submodule(module_fqn)
        if isinstance(module, SparseDelta):
            raise ValueError(f"{module_fqn} is already sparsified")
        if idx.numel() == 0:
            continue
        if idx.dtype != torch.long or idx.ndim != 1 or int(idx.min()) < 0 or int(idx.max()) >= module.weight.numel():
            raise ValueError(f"indices for {name} must be 1-D int64 positions in [0, {module.weight.numel()})")
        module.weight.requires_grad_(False)
        wrapper = SparseDelta(module, idx)
        parent, child = _parent(model, module_fqn)
        setattr(parent, child, wrapper)
        layers[name] = wrapper
    record_swaps_(model)  # save_pretrained while wrapped (HF Trainer checkpoints) then reloads right
    return layers


def sparse_layers(model: nn.Module) -> dict[str, SparseDelta]:
    """{weight fqn in the plain model: wrapper} for every SparseDelta in `model`."""
    out = {}
    for fqn, module in model.named_modules():
        if isinstance(module, SparseDelta):
            out[f"{fqn}.weight"] = module
    return out


@torch.no_grad()
def merge_sparse_(model: nn.Module, *, merge: bool = True) -> None:
    """Put the plain modules back; with `merge`, first W0[indices] += values (in place).

    Unselected entries are not written at all, so they stay bit-identical to W0.
    """
    for name, layer in sparse_layers(model).items():
        if merge:
            w = layer.base.weight
            w.view(-1).index_add_(0, layer.indices, layer.values.to(w.dtype))
        parent, child = _parent(model, name.rpartition(".")[0])
        setattr(parent, child, layer.base)
    record_swaps_(model)

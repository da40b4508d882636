"""`FactorizedLinear`: a Linear layer stored as two plain dense matmuls, x -> up(down(x)).

    down: nn.Linear(in, r, bias=False)     weight [r, in]
    up:   nn.Linear(r, out, bias=...)      weight [out, r], carries the original bias

Both factors are ordinary `nn.Linear` children, so everything that targets Linear layers works
on them unchanged: the optimizer and the sparse fine-tuning engine train them, `quantize_`
(int8 / int4 / dynamic int8) quantizes them. The product W = up.weight @ down.weight is never
formed in `forward`; `merge_factorized_(model)` forms it once to give back plain nn.Linear layers
of the original shapes, for runtimes that need them.

Saved with `save_pretrained`, a factorized layer also writes an empty `<fqn>.weight` tensor
(a guard): plain transformers, which expects `<fqn>.weight` of shape [out, in], then stops with a
size-mismatch error instead of initialising the layer at random (it would otherwise drop the
unknown `up` / `down` tensors with only a LOAD REPORT). sparseft's loader (artifact.py) drops
the guard again.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sparseft.compress.quantize.layers import set_module

GUARD = "weight"   # the tensor name plain transformers expects for this layer


def _add_guard(module, state_dict, prefix, local_metadata) -> None:
    state_dict[prefix + GUARD] = torch.empty(0, dtype=torch.uint8)


def _drop_guard(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                error_msgs) -> None:
    guard = state_dict.get(prefix + GUARD)
    if guard is not None and guard.numel() == 0:
        del state_dict[prefix + GUARD]


class FactorizedLinear(nn.Module):
    """y = up(down(x)): a rank-`rank` replacement of an [out, in] Linear."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)
        self.register_state_dict_post_hook(_add_guard)
        self.register_load_state_dict_pre_hook(_drop_guard)

    @classmethod
    @torch.no_grad()
    def from_factors(cls, up: torch.Tensor, down: torch.Tensor, bias: torch.Tensor | None, *,
                     like: nn.Linear | None = None) -> "FactorizedLinear":
        """Build from up [out, r] and down [r, in] (cast to `like`'s dtype/device if given)."""
        dtype = like.weight.dtype if like is not None else up.dtype
        device = like.weight.device if like is not None else up.device
        layer = cls(down.shape[1], up.shape[0], up.shape[1], bias=bias is not None, device=device, dtype=dtype)
        layer.up.weight.copy_(up)
        layer.down.weight.copy_(down)
        if bias is not None:
            layer.up.bias.copy_(bias)
        if like is not None:   # frozen stays frozen, trainable stays trainable
            trainable = like.weight.requires_grad
            for p in layer.parameters():
                p.requires_grad_(trainable)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """up @ down: the dense [out, in] weight this layer computes (float32 product)."""
        return (_dense(self.up).float() @ _dense(self.down).float()).to(_dtype(self.up))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _dense(layer: nn.Module) -> torch.Tensor:
    """The float weight of a factor, also when `quantize_` replaced it (dequantized)."""
    if isinstance(layer, nn.Linear):
        return layer.weight
    deq = getattr(layer, "dequantize", None)
    if callable(deq):
        return deq()
    raise TypeError(f"cannot read the weight of a {type(layer).__name__} factor")


def _dtype(layer: nn.Module) -> torch.dtype:
    return layer.weight.dtype if isinstance(layer, nn.Linear) else torch.float32


def factorized_layers(model: nn.Module) -> list[tuple[str, FactorizedLinear]]:
    """[(fqn, FactorizedLinear)] in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FactorizedLinear)]


@torch.no_grad()
def merge_factorized_(model: nn.Module) -> int:
    """Replace every FactorizedLinear by an nn.Linear with W = up @ down; returns the count.

    The merged model has the original shapes (plain transformers loads it) and computes the same
    function up to float rounding; it is as large as the dense model again.
    """
    layers = factorized_layers(model)
    for fqn, layer in layers:
        weight, bias = layer.merged_weight(), getattr(layer.up, "bias", None)
        new = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None,
                        device=weight.device, dtype=weight.dtype)
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
        set_module(model, fqn, new)
    config = getattr(model, "config", None)
    if layers and config is not None and hasattr(config, "sparseft_factorization"):
        del config.sparseft_factorization      # the merged model is a plain dense model again
    return len(layers)


def factorized_summary(model: nn.Module) -> dict:
    """{"factorized_layers", "ranks": {fqn: rank}, "factor_params"} of a model."""
    layers = factorized_layers(model)
    return {"factorized_layers": len(layers), "ranks": {n: m.rank for n, m in layers},
            "factor_params": sum(m.rank * (m.in_features + m.out_features) for _, m in layers)}

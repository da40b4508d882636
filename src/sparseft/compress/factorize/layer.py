"""`FactorizedLinear`: a Linear layer stored as two plain dense matmuls, x -> up(down(x)).

    down: nn.Linear(in, r, bias=False)     weight [r, in]
    up:   nn.Linear(r, out, bias=...)      weight [out, r], carries the original bias

Both factors are ordinary `nn.Linear` children, so everything that targets Linear layers works
on them unchanged: the optimizer and the sparse fine-tuning engine train them, `quantize_`
(int8 / int4 / dynamic int8) quantizes them. The product W = up.weight @ down.weight is never
formed in `forward`; `merge_factorized_(model)` forms it once to give back plain nn.Linear layers
of the original shapes, for runtimes that need them.

Saving follows sparseft's swapped-module protocol (utils/swaps.py): `swap_spec()` describes the
layer (shapes, rank, and the spec of a factor that was itself swapped, e.g. quantized) and
`record_swaps_` writes it into config.json's quantization_config, so after `import sparseft`
`from_pretrained` rebuilds the layer (`from_swap_spec`) and loads the factors. The save guard
(an empty `<fqn>.weight` tensor) makes plain transformers, which expects `<fqn>.weight` of shape
[out, in], stop with a size-mismatch error instead of initialising the layer at random.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sparseft.compress.quantize.layers import set_module
from sparseft.utils.swaps import GUARD, record_swaps_

FACTORS = ("down", "up")


def _add_guard(module, state_dict, prefix, local_metadata) -> None:
    """The save guard (utils/swaps.py), except on a skeleton: from_pretrained builds the layer on
    the meta device and lists the tensors to fill from its state dict, where a guard has no place."""
    if not any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        state_dict[prefix + GUARD] = torch.empty(0, dtype=torch.uint8)


def _drop_guard(module, state_dict, prefix, *args) -> None:
    guard = state_dict.get(prefix + GUARD)
    if guard is not None and guard.numel() == 0:
        del state_dict[prefix + GUARD]


def _drop_factor_guards(module, state_dict, prefix, local_metadata) -> None:
    """A swapped factor's own guard (`<fqn>.up.weight`, empty) is redundant under the layer's."""
    for name in FACTORS:
        key = f"{prefix}{name}.{GUARD}"
        t = state_dict.get(key)
        if t is not None and t.numel() == 0 and not isinstance(getattr(module, name), nn.Linear):
            del state_dict[key]


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
        self.register_state_dict_post_hook(_drop_factor_guards)
        self.register_load_state_dict_pre_hook(_drop_guard)
        self._sparseft_save_guard = True          # record_swaps_ then adds no second guard

    def swap_spec(self) -> dict:
        """Constructor arguments, plus the swap spec of each factor that is not a plain Linear."""
        spec = {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": getattr(self.up, "bias", None) is not None}
        for name in FACTORS:
            child = getattr(self, name)
            if not isinstance(child, nn.Linear):
                cls = type(child)
                spec[name] = {"type": cls.__name__, "class": f"{cls.__module__}.{cls.__qualname__}",
                              **child.swap_spec()}
        return spec

    @classmethod
    def from_swap_spec(cls, spec: dict, current: nn.Module, shapes: dict) -> "FactorizedLinear":
        """An empty layer as recorded (swapped factors rebuilt with the shapes stored for them)."""
        dtype = getattr(getattr(current, "weight", None), "dtype", None)
        dtype = dtype if dtype is not None and dtype.is_floating_point else None
        layer = cls(spec["in_features"], spec["out_features"], spec["rank"], bias=spec["bias"], dtype=dtype)
        for name in FACTORS:
            if isinstance(spec.get(name), dict):
                from sparseft.export.hf_quantizer import build_module  # lazy: the one builder of swapped modules

                setattr(layer, name, build_module(name, spec[name], getattr(layer, name), shapes))
        return layer

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
    if layers:
        record_swaps_(model)
    return len(layers)


def factorized_summary(model: nn.Module) -> dict:
    """{"factorized_layers", "ranks": {fqn: rank}, "factor_params"} of a model."""
    layers = factorized_layers(model)
    return {"factorized_layers": len(layers), "ranks": {n: m.rank for n, m in layers},
            "factor_params": sum(m.rank * (m.in_features + m.out_features) for _, m in layers)}

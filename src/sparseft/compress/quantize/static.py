"""Static int8: int8 weights and int8 activations with ranges calibrated once, before inference.

Dynamic int8 (dynamic.py) measures every input's range at run time: a min/max reduction plus
two host reads per layer and call. Static int8 measures the ranges on calibration batches
instead (forward pre-hooks on the targeted Linear layers of the fp32 model) and fixes one
scale / zero point per layer, so inference quantizes with one fused multiply-add-clamp pass.
The price is clipping: inputs outside the calibrated range saturate, so calibrate on data like
the deployment data (`observer="percentile"` ignores the rarest outliers).

Kernels as dynamic int8: oneDNN `qlinear_pointwise` (uint8 activations, asymmetric per tensor)
where the build has it, else `torch._int_mm` (int8 symmetric per tensor).

    >>> quantize_(model, StaticInt8Config(), batches=calibration_batches)   # doctest: +SKIP

Saving: `save_pretrained` folders (after `import sparseft`, `from_pretrained` rebuilds the layers)
and the compressed checkpoint (export/compressed.py, format 3: int8 codes, scales and the
calibrated `input_range`) both reload to the same outputs; `sparseft quantize --method
static_int8` calibrates on the recipe's training examples and exports the latter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from sparseft.compress.quantize.dynamic import onednn_available
from sparseft.compress.quantize.layers import check_targets, default_ignore, set_module, target_linears
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method
from sparseft.utils.swaps import add_save_guard

OBSERVERS = ("minmax", "percentile")
BACKENDS = ("auto", "onednn", "int_mm")


class StaticInt8Linear(nn.Module):
    """Linear with int8 per-channel weights and a fixed (calibrated) int8 input quantizer.

    Buffers: weight_int8 int8 [out, in], weight_scale f32 [out], input_range f32 [2] (lo <= 0 <= hi);
    `bias` f32 [out] or None. The oneDNN prepacked weight is a cache (not saved).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, backend: str = "auto") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.in_features, self.out_features = in_features, out_features
        self.backend = ("onednn" if onednn_available() else "int_mm") if backend == "auto" else backend
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("input_range", torch.tensor([-1.0, 1.0]))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._packed, self._packed_key = None, None
        add_save_guard(self)  # save_pretrained folders: see sparseft.utils.swaps

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, lo: float, hi: float, backend: str = "auto") -> "StaticInt8Linear":
        w = linear.weight.detach().float()                                    # [out, in]
        scale = w.abs().amax(1) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, backend=backend)
        layer.weight_int8.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        layer.weight_scale.copy_(scale)
        layer.input_range.copy_(torch.tensor([min(lo, 0.0), max(hi, 0.0)]))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] the int8 codes stand for."""
        return self.weight_int8.float() * self.weight_scale.float()[:, None]

    def swap_spec(self) -> dict:
        """Constructor arguments (the swapped-module protocol of sparseft's save/load code)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "backend": self.backend}

    def __getstate__(self):  # the packed tensor cannot be pickled or deep-copied
        state = self.__dict__.copy()
        state["_packed"], state["_packed_key"] = None, None
        return state

    def _packed_weight(self):
        key = (self.weight_int8.data_ptr(), self.weight_int8._version)
        if self._packed is None or self._packed_key != key:
            self._packed, self._packed_key = torch.ops.onednn.qlinear_prepack(self.weight_int8, None), key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()                                 # [M, in]
        lo, hi = self.input_range.tolist()
        bias = None if self.bias is None else self.bias.float()
        if self.backend == "onednn" and x2.device.type == "cpu":
            s = max((hi - lo) / 255, 1e-8)
            zp = int(round(-lo / s))
            # one pass: scale, shift, saturate at the calibrated range; +0.5 then truncation rounds
            xq = x2.mul(1.0 / s).add_(zp + 0.5).clamp_(0, 255).to(torch.uint8)
            y = torch.ops.onednn.qlinear_pointwise(
                xq, s, zp, self._packed_weight(), self.weight_scale.float(),
                torch.zeros(self.out_features, dtype=torch.long), bias, 1.0, 0, torch.float32, "none", [], "")
        else:
            s = max(max(-lo, hi) / 127, 1e-8)
            xq = x2.mul(1.0 / s).round_().clamp_(-127, 127).to(torch.int8)
            y = torch._int_mm(xq, self.weight_int8.t()).float() * (s * self.weight_scale.float())
            y = y if bias is None else y + bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        lo, hi = self.input_range.tolist()
        return (f"in_features={self.in_features}, out_features={self.out_features}, backend={self.backend}, "
                f"input_range=[{lo:.3g}, {hi:.3g}]")


@dataclass
class StaticInt8Config(BaseConfig):
    """Args:
        observer: 'minmax' (the extreme values seen) or 'percentile' (per batch, the
            `percentile`-th and (100 - percentile)-th values, averaged over batches).
        percentile: for observer='percentile', e.g. 99.99.
        backend: 'auto' (oneDNN where available, else int_mm), 'onednn' or 'int_mm'.
        targets / ignore: which Linear layers.
    """

    observer: str = "minmax"
    percentile: float = 99.99
    backend: str = "auto"
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=default_ignore)

    def __post_init__(self) -> None:
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {self.observer!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "onednn" and not onednn_available():
            raise ValueError("backend 'onednn' is not available in this torch build; use backend='int_mm'")
        check_targets(self.targets, self.ignore)

    def needs_batches(self) -> bool:
        return True


class _RangeObserver:
    """Per-layer input range over calibration batches: running min/max or mean of percentiles."""

    def __init__(self, cfg: StaticInt8Config) -> None:
        self.cfg, self.lows, self.highs = cfg, [], []

    def __call__(self, module, args) -> None:
        x = args[0].detach().float().reshape(-1)
        if self.cfg.observer == "minmax":
            lo, hi = torch.aminmax(x)
        else:
            if x.numel() > 1_000_000:  # quantile's input limit; a fixed stride keeps it deterministic
                x = x[:: x.numel() // 1_000_000 + 1]
            q = self.cfg.percentile / 100
            lo, hi = torch.quantile(x, torch.tensor([1 - q, q]))
        self.lows.append(float(lo))
        self.highs.append(float(hi))

    def range(self) -> tuple[float, float]:
        if self.cfg.observer == "minmax":
            return min(self.lows), max(self.highs)
        return sum(self.lows) / len(self.lows), sum(self.highs) / len(self.highs)


@torch.no_grad()
def quantize_static_(model: nn.Module, cfg: StaticInt8Config, *, batches=None) -> None:
    """Calibrate input ranges on `batches` (fp32 forward passes), then swap in StaticInt8Linear."""
    if not batches:
        raise ValueError("static int8 needs calibration batches (batches=[...]); in a recipe give training data")
    linears = target_linears(model, cfg.targets, cfg.ignore)
    observers = {fqn: _RangeObserver(cfg) for fqn, _ in linears}
    handles = [lin.register_forward_pre_hook(observers[fqn]) for fqn, lin in linears]
    try:
        device = next(model.parameters()).device
        for batch in batches:
            model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()
    for fqn, lin in linears:
        if not observers[fqn].lows:
            raise ValueError(f"static int8: layer {fqn!r} saw no input during calibration (is it used?)")
        set_module(model, fqn, StaticInt8Linear.from_linear(lin, *observers[fqn].range(), backend=cfg.backend))


register_method(kind="quantize", name="static_int8", config_cls=StaticInt8Config, apply_fn=quantize_static_,
                description="int8 weights + int8 activations with calibrated (fixed) ranges")

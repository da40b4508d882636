"""Dynamic int8 quantization for CPU inference: int8 weights, activations quantized at run time.

Weights are quantized once, symmetric per output channel (int8 -127..127, so pruned zeros stay
exactly 0); each forward quantizes its input to 8 bits on the fly and runs an integer matmul
with int32 accumulation, then rescales to float. Kernels (`backend`):

  * "onednn"  `torch.ops.onednn.qlinear_pointwise` on a prepacked weight, activations int8 per
              token (symmetric): the GEMM runs with activation scale 1 and each output row is
              multiplied by its token's scale afterwards. The int8 GEMM that torch's x86
              Inductor / torchao PT2E flow lowers to, on plain tensors; uses AVX512-VNNI / AMX
              where the CPU has them. A layer built with backend "auto" takes it where available.
  * "onednn_tensor"  the same GEMM with uint8 activations per tensor (asymmetric, one scale and
              zero point for all tokens of the call), the scheme oneDNN / torch.ao quantize
              natively. One output pass less, but one large token or channel coarsens every
              other token's grid: on SmolLM2 it cost 50.1 vs 32.4 WikiText-2 perplexity against
              per-token (fp32 31.5). The kernel is exact (it equals float math on the same
              uint8 codes; no u8 x s8 saturation with VNNI): the loss is the scale granularity
              (docs/hardware.md). Before format 3 / kernel_version 2, "onednn" meant this.
  * "int_mm"  `torch._int_mm` (int8 x int8 -> int32), activations int8 per token (symmetric):
              the same numbers as "onednn", portable (any CPU, CUDA), but its CPU kernel is
              slow for large batches. The fallback where oneDNN is missing.
  * "fbgemm"  opt-in: `torch.ops.quantized.linear_dynamic`, the kernel behind torch.ao's
              quantize_dynamic, on our int8 weights (7-bit activations, as there). Up to ~1.7x
              faster than oneDNN per layer on small batches here, but it needs quantized tensors,
              which torch 2.13 deprecates (it warns they will be removed): not the default.

`DynamicInt8Config(backend="auto")` (the default) measures the kernels this CPU and build offer
on the model's own layer shapes and takes the fastest of those whose output error on the model's
own activations passes the quality gate (kernels.py; `cfg.resolve(model)` returns the choice,
the timings and the errors, which the quantize stage logs and the config records).

Why (numbers in docs/quantization.md, `bench_quant.py --only linear`): the fbgemm path is the
fastest but deprecated with torch.ao.quantization; oneDNN is the fastest *maintained* kernel
(level with fbgemm at batch 32, several times faster than fp32 per layer); torchao 0.18's
Int8DynamicActivationInt8WeightConfig was 2-7x slower than oneDNN on this CPU, and
`_weight_int8pack_mm` (weight-only int8, fp32 activations) slower than fp32.

    >>> quantize_(model, DynamicInt8Config())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from sparseft.compress.quantize.layers import check_targets, default_ignore, set_module, target_linears
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method
from sparseft.utils.swaps import add_save_guard

BACKENDS = ("auto", "onednn", "onednn_tensor", "int_mm", "fbgemm")
ONEDNN = ("onednn", "onednn_tensor")
KERNEL_VERSION = 2  # 2: "onednn" is per-token; in specs without it "onednn" meant "onednn_tensor"


@functools.lru_cache(maxsize=None)
def onednn_available() -> bool:
    """Whether torch's oneDNN int8 linear runs here (x86/ARM builds with mkldnn); tried once."""
    try:
        w = torch.ones(2, 8, dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(w, None)
        x = torch.ones(1, 8, dtype=torch.uint8)
        torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, packed, torch.ones(2), torch.zeros(2, dtype=torch.long),
                                           None, 1.0, 0, torch.float32, "none", [], "")
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "onednn" if onednn_available() else "int_mm"
    if backend in ONEDNN and not onednn_available():
        raise ValueError(f"backend {backend!r} is not available in this torch build; use backend='int_mm'")
    if backend == "fbgemm" and "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ValueError("backend 'fbgemm' is not available in this torch build; use backend='onednn' or 'int_mm'")
    return backend


class DynamicInt8Linear(nn.Module):
    """Linear with int8 per-channel weights and run-time int8 activations.

    Buffers: weight_int8 int8 [out, in], weight_scale f32 [out]; `bias` f32 [out] or None.
    The prepacked weight (oneDNN / fbgemm) is a cache, rebuilt whenever the weight, scales or
    bias change; it is not saved.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, backend: str = "auto") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.backend = resolve_backend(backend)
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._packed: torch.Tensor | None = None
        self._packed_key: tuple | None = None
        add_save_guard(self)  # save_pretrained folders: see sparseft.utils.swaps

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, backend: str = "auto") -> "DynamicInt8Linear":
        w = linear.weight.detach().float()                                    # [out, in]
        scale = w.abs().amax(1) / 127                                         # [out]
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, backend=backend)
        layer.weight_int8.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] the int8 codes stand for."""
        return self.weight_int8.float() * self.weight_scale.float()[:, None]

    def __getstate__(self):  # the oneDNN packed tensor cannot be pickled or deep-copied
        state = self.__dict__.copy()
        state["_packed"], state["_packed_key"] = None, None
        return state

    def _packed_weight(self):
        tensors = [t for t in (self.weight_int8, self.weight_scale, self.bias) if t is not None]
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._packed is None or self._packed_key != key:
            if self.backend == "fbgemm":
                # torch 2.13 deprecates quantized tensors (it warns here); opt-in reference path
                zeros = torch.zeros(self.out_features, dtype=torch.long)
                qweight = torch._make_per_channel_quantized_tensor(self.weight_int8, self.weight_scale.double(),
                                                                   zeros, 0)
                bias = None if self.bias is None else self.bias.detach().float()
                self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
            else:
                self._packed = torch.ops.onednn.qlinear_prepack(self.weight_int8, None)
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()                                 # [M, in]
        if self.backend == "onednn" and x2.device.type == "cpu":
            y = self._forward_onednn_token(x2)
        elif self.backend == "onednn_tensor" and x2.device.type == "cpu":
            y = self._forward_onednn(x2)
        elif self.backend == "fbgemm" and x2.device.type == "cpu":
            # activations uint8 per tensor, 7-bit range (reduce_range) as torch's quantize_dynamic
            y = torch.ops.quantized.linear_dynamic(x2, self._packed_weight(), True)
        else:
            y = self._forward_int_mm(x2)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _forward_onednn(self, x: torch.Tensor) -> torch.Tensor:
        # per-tensor asymmetric uint8: x ~ (xq - zp) * s over [min(x, 0), max(x, 0)]. The grid has
        # 254 steps, so x / s + zp + 0.5 lies in [0, 255.5) and truncating to uint8 rounds to
        # nearest without a clamp pass (two elementwise passes instead of four).
        lo, hi = torch.aminmax(x.detach())
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        s = max((hi - lo) / 254, 1e-8)
        zp = round(-lo / s)
        xq = x.mul(1.0 / s).add_(zp + 0.5).to(torch.uint8)                   # [M, in]
        zeros = torch.zeros(self.out_features, dtype=torch.long)
        return torch.ops.onednn.qlinear_pointwise(
            xq, s, zp, self._packed_weight(), self.weight_scale.float(), zeros,
            None if self.bias is None else self.bias.float(),
            1.0, 0, torch.float32, "none", [], "")                          # [M, out] f32

    def _forward_onednn_token(self, x: torch.Tensor) -> torch.Tensor:
        # per-token symmetric int8 codes, passed as uint8 with zero point 128 (oneDNN's int8
        # activations take a reference path ~10,000x slower here); |x / s| <= 127, so
        # x / s + 128.5 lies in [1.5, 255.5] and truncation rounds to nearest without a clamp
        s = (_row_absmax(x) / 127).clamp_min_(1e-8)  # [M, 1]
        xq = x.div(s).add_(128.5).to(torch.uint8)                            # [M, in]
        zeros = torch.zeros(self.out_features, dtype=torch.long)
        y = torch.ops.onednn.qlinear_pointwise(                               # [M, out] f32 = acc * w_scale
            xq, 1.0, 128, self._packed_weight(), self.weight_scale.float(), zeros, None,
            1.0, 0, torch.float32, "none", [], "")
        if self.bias is None:
            return y.mul_(s)
        return torch.addcmul(self.bias.float(), y, s, out=y)                 # bias + y * s, one pass

    def _forward_int_mm(self, x: torch.Tensor) -> torch.Tensor:
        s, xq = _per_token_int8(x)
        acc = torch._int_mm(xq, self.weight_int8.t())                         # [M, out] int32
        y = acc.float() * s * self.weight_scale.float()
        return y if self.bias is None else y + self.bias.float()

    def swap_spec(self) -> dict:
        """Constructor arguments (+ kernel_version), recorded in config.json by utils.swaps.record_swaps_."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "backend": self.backend, "kernel_version": KERNEL_VERSION}

    @classmethod
    def from_spec(cls, spec: dict) -> "DynamicInt8Linear":
        """An empty layer from a stored spec (swap_spec or a compressed-export entry); specs written
        before kernel_version 2 get the per-tensor kernel their "onednn" meant."""
        return cls(spec["in_features"], spec["out_features"], bias=spec["bias"], backend=stored_backend(spec))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, backend={self.backend}"


def _row_absmax(x: torch.Tensor) -> torch.Tensor:
    """max |x| per row [M, 1]: two reductions without the |x| temporary (abs().amax() writes one;
    vector_norm(inf) is several times slower on CPU)."""
    return torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg_())


def _per_token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per token: x[m] ~ xq[m] * s[m]; returns s [M, 1] f32 and xq [M, in] int8.
    |x / s| <= 127 by construction, so no clamp pass is needed."""
    s = (_row_absmax(x) / 127).clamp_min_(1e-8)
    return s, x.div(s).round_().to(torch.int8)


def stored_backend(spec: dict) -> str:
    """The kernel a stored spec asks for, in today's names (see KERNEL_VERSION)."""
    backend = spec.get("backend", "auto")
    if backend == "onednn" and spec.get("kernel_version", 1) < 2:
        return "onednn_tensor"
    return backend


@dataclass
class DynamicInt8Config(BaseConfig):
    """Args:
        backend: 'auto' (measured: the fastest of the kernels this CPU and build offer, on the
            model's own layer shapes, among those passing the error gate on the model's own
            activations; compress/quantize/kernels.py), 'onednn' (per-token activations),
            'onednn_tensor' (per-tensor), 'int_mm' or 'fbgemm' (deprecated torch quantized
            tensors; opt-in).
        targets / ignore: which Linear layers.
        kernel_choice: filled by `resolve` when backend was 'auto': the chosen kernel, the
            reason, each candidate's relative time and error (informational; saved with the
            resolved config and in the model's config.json as `sparseft_int8_kernel`).
    """

    backend: str = "auto"
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=default_ignore)
    kernel_choice: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check_targets(self.targets, self.ignore)

    def resolve(self, model: nn.Module, *, batches=None, hw=None, time_fn=None, errors=None, model_times=None
                ) -> tuple["DynamicInt8Config", dict | None]:
        """This config with backend 'auto' replaced by the fastest kernel that passes the error
        gate on `model`'s targeted layers, plus the full measurement (None when the backend was
        given). `batches`: probe inputs (default: random token ids); `time_fn` / `errors`:
        injected timings / per-kernel errors (tests)."""
        if self.backend != "auto":
            return self, None
        choice = choose_kernel(model, self.targets, self.ignore, batches=batches, hw=hw, time_fn=time_fn,
                               errors=errors, model_times=model_times)
        from sparseft.compress.quantize.kernels import choice_summary

        return self.replace(backend=choice["choice"], kernel_choice=choice_summary(choice)), choice


def choose_kernel(model: nn.Module, targets: list[str], ignore: list[str], *, batches=None, hw=None,
                  time_fn=None, errors=None, model_times: dict | None = None) -> dict:
    """Measure the candidate int8 kernels of this CPU on the model's layer shapes, check their
    error on the model's activations (kernels.py), then time the passing ones on the whole model
    (model_timing.py; skipped when `time_fn` is injected, unless `model_times` is given too)."""
    from sparseft.compress.quantize.kernels import candidate_kernels, measure_kernels, probe_errors
    from sparseft.compress.quantize.model_timing import refine_choice, time_kernels_on_model
    from sparseft.utils.hardware import detect

    hw = hw or detect()
    candidates = candidate_kernels(hw, onednn=onednn_available(),
                                   fbgemm="fbgemm" in torch.backends.quantized.supported_engines)
    linears = target_linears(model, targets, ignore)
    if errors is None:
        errors = probe_errors(model, linears, candidates, batches=batches)
    choice = measure_kernels(linears, candidates, time_fn=time_fn, errors=errors)
    passed = [k for k, r in choice["candidates"].items() if r["passed"]]
    if model_times is None and time_fn is None and passed:   # one passing kernel too: is it faster than fp32?
        model_times = time_kernels_on_model(model, linears, passed)
    if model_times:
        choice = refine_choice(choice, model_times)
    return {**choice, "hardware_class": hw.hardware_class}


@torch.no_grad()
def quantize_dynamic_(model: nn.Module, cfg: DynamicInt8Config, *, batches=None) -> None:
    """Swap targeted Linear layers for DynamicInt8Linear; backend 'auto' is measured first
    (`cfg.resolve`, probing the kernels' error on `batches` when given). The choice is recorded
    in `model.config.sparseft_int8_kernel` (saved with the model)."""
    measured = cfg.backend == "auto"
    cfg, _ = cfg.resolve(model, batches=batches)
    backend = resolve_backend(cfg.backend)
    if measured and not onednn_available():
        warnings.warn("oneDNN int8 linear is unavailable in this torch build; dynamic int8 uses the slower "
                      "torch._int_mm kernel", RuntimeWarning, stacklevel=2)
    if (cfg.kernel_choice or {}).get("slower_than_fp32"):
        warnings.warn(f"dynamic int8 ({cfg.backend}) measured slower than fp32 on this model and CPU: "
                      f"{cfg.kernel_choice['reason']}", RuntimeWarning, stacklevel=2)
    if cfg.kernel_choice and hasattr(model, "config"):
        model.config.sparseft_int8_kernel = cfg.kernel_choice
    for fqn, linear in target_linears(model, cfg.targets, cfg.ignore):
        set_module(model, fqn, DynamicInt8Linear.from_linear(linear, backend))


register_method(kind="quantize", name="dynamic_int8", config_cls=DynamicInt8Config, apply_fn=quantize_dynamic_,
                description="int8 weights + run-time int8 activations (CPU inference, oneDNN)")

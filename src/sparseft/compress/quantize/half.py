"""Half-precision weights (bf16 / fp16) as a quantization choice: 2x smaller, and on CPUs with
native bf16 units (AVX512-BF16, AMX, ARM BF16) the fastest inference path there is.

The whole model is cast (`model.to(dtype)`; mixed-dtype models would need casts between layers)
and `config.dtype` is set, so `save_pretrained` writes 16-bit safetensors that plain transformers
loads with `from_pretrained(dir, dtype=torch.bfloat16)` (or `dtype="auto"`). Through the quantize
stage the accuracy delta and the size are reported as for any quantizer; the compressed export
stores the 16-bit tensors as they are (2x smaller than fp32).

Which half type: bf16 keeps fp32's range (no overflow in attention scores or large activations)
and is the one CPUs compute natively; fp16 has 3 more mantissa bits but its range (max 65504)
can overflow, and most CPUs convert it to fp32 to compute. Without native bf16 units both are
*slower* than fp32 on CPU (torch emulates them): docs/hardware.md.

    >>> quantize_(model, HalfPrecisionConfig(dtype="bfloat16"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from sparseft.config.base import BaseConfig
from sparseft.registry import register_method

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class HalfPrecisionConfig(BaseConfig):
    """Args:
        dtype: 'bfloat16' (default: fp32's range, native on recent CPUs) or 'float16'.
    """

    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")


def _already_quantized(model: nn.Module) -> list[str]:
    from sparseft.compress.quantize.dynamic import DynamicInt8Linear
    from sparseft.compress.quantize.layers import QuantEmbedding, QuantLinear

    return [fqn for fqn, m in model.named_modules() if isinstance(m, (QuantLinear, QuantEmbedding, DynamicInt8Linear))]


@torch.no_grad()
def half_precision_(model: nn.Module, cfg: HalfPrecisionConfig, *, batches=None) -> None:
    """Cast every floating-point parameter and buffer of `model` to `cfg.dtype` (batches unused)."""
    quantized = _already_quantized(model)
    if quantized:
        # casting would also round their scales to 16 bits; an int8 model is not made smaller by it
        raise ValueError(f"half precision: the model already has quantized layers ({quantized[0]}, ...); "
                         f"cast to {cfg.dtype} before quantizing, or not at all")
    dtype = DTYPES[cfg.dtype]
    model.to(dtype)
    if hasattr(model, "config"):
        model.config.dtype = dtype  # what save_pretrained records; from_pretrained(dtype="auto") reads it


register_method(kind="quantize", name="half", config_cls=HalfPrecisionConfig, apply_fn=half_precision_,
                description="bf16 / fp16 weights and compute (2x smaller; fast on CPUs with bf16 units)")

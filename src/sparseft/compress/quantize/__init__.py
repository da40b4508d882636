"""Quantization: lower-precision weights for smaller checkpoints and faster CPU inference.

One verb, `quantize_(model, config, *, batches=None)` (api.py), and one module per method, each a
config dataclass + apply function registered with kind "quantize":

  rtn.py      RTNConfig          uniform round-to-nearest int8/int4, sym/asym, tensor/channel/group
  nf4.py      NF4Config          4-bit NormalFloat with per-block absmax (non-uniform)
  kmeans.py   KMeansConfig       k-means codebooks, optionally activation-weighted + fp32 outliers
  gptq.py     GPTQConfig         error-compensated int4/int8 from calibration data
  dynamic.py  DynamicInt8Config  int8 weights + run-time int8 activations (oneDNN) for CPU speed
  half.py     HalfPrecisionConfig  bf16 / fp16 weights and compute (2x smaller; fast with bf16 units)
  static.py   StaticInt8Config   int8 weights + int8 activations with calibrated ranges
  kernels.py  the int8 kernel choice (hardware rule + micro-benchmark) behind backend='auto'

Weight-only methods swap nn.Linear for `layers.QuantLinear` (packed codes dequantized on the
fly); dynamic int8 swaps in `dynamic.DynamicInt8Linear`. `export/compressed.py` writes either to
disk as packed integers + scales. `stage.py` is the recipe stage `quantize`.
"""

from sparseft.compress.quantize.api import needs_batches, quantize_
from sparseft.compress.quantize.dynamic import DynamicInt8Config, DynamicInt8Linear
from sparseft.compress.quantize.gptq import GPTQConfig
from sparseft.compress.quantize.half import HalfPrecisionConfig
from sparseft.compress.quantize.kmeans import KMeansConfig
from sparseft.compress.quantize.layers import QuantLinear, quantized_summary
from sparseft.compress.quantize.nf4 import NF4Config
from sparseft.compress.quantize.rtn import RTNConfig
from sparseft.compress.quantize.static import StaticInt8Config, StaticInt8Linear

__all__ = ["quantize_", "needs_batches", "RTNConfig", "NF4Config", "KMeansConfig", "GPTQConfig",
           "DynamicInt8Config", "HalfPrecisionConfig", "StaticInt8Config", "StaticInt8Linear", "QuantLinear",
           "DynamicInt8Linear", "quantized_summary"]

"""Integer grids and bit packing shared by every weight quantizer and by the compressed export.

One representation for all weight-only schemes: an unsigned integer *code* per weight plus
per-group tensors that turn codes back into floats.

  * uniform (RTN, GPTQ):  w ~ (code - zero) * scale          codes in [0, 2^bits - 1]
    symmetric grids use the fixed zero 2^(bits-1) and the restricted range
    [-(2^(bits-1) - 1), 2^(bits-1) - 1] around it (int8: -127..127, int4: -7..7), so +max and
    -max are both exact and 0 is always code 2^(bits-1);
    asymmetric grids stretch [min(w, 0), max(w, 0)] over all 2^bits codes with an integer zero
    point, so 0 is exactly representable as well (a pruned weight stays exactly 0).
  * codebook (k-means, NF4): w ~ codebook[row, code] * scale  (scale may be absent).

Groups run along the input dimension of a [out, in] weight: `group_size` consecutive inputs of
one output row share a scale (and zero). Per-channel is group_size = in; per-tensor uses scale
shape [1, 1]. The last group may be shorter when in % group_size != 0.

Packing: codes of <= 4 bits are stored two per byte (low nibble first), 8-bit codes one per byte;
bitmasks eight per byte (LSB first), row by row.
"""

from __future__ import annotations

import math

import torch

GRANULARITIES = ("tensor", "channel", "group")


def n_groups(in_features: int, group_size: int) -> int:
    return math.ceil(in_features / group_size)


def expand_groups(t: torch.Tensor, group_size: int, in_features: int) -> torch.Tensor:
    """[rows, G] per-group values -> [rows, in] per-weight values (rows may be 1 to broadcast)."""
    return t.repeat_interleave(group_size, dim=1)[:, :in_features]


def grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, in] -> [out, G, group_size], the ragged last group padded with zeros."""
    out, cols = w.shape
    g = n_groups(cols, group_size)
    pad = g * group_size - cols
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(out, g, group_size)


def group_size_for(granularity: str, group_size: int, in_features: int) -> int:
    """The effective group length of a granularity ('tensor' and 'channel' span the whole row)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return min(group_size, in_features) if granularity == "group" else in_features


def affine_params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for the values along the last dim of `w` ([..., n] -> [...] each).

    Zero points are integers stored as float (exact); ranges always include 0.
    """
    w = w.float()
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().amax(-1) / qmax
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        levels = 2 ** bits - 1
        lo = w.amin(-1).clamp(max=0.0)
        hi = w.amax(-1).clamp(min=0.0)
        scale = (hi - lo) / levels
        zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(0, levels)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero group: any scale works
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   symmetric: bool) -> torch.Tensor:
    """Codes (uint8) of `w` on the grid (scale, zero), broadcast against w."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        q = torch.round(w.float() / scale).clamp(-qmax, qmax) + zero
    else:
        q = (torch.round(w.float() / scale) + zero).clamp(0, 2 ** bits - 1)
    return q.to(torch.uint8)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (codes.float() - zero) * scale


def quantize_uniform(weight: torch.Tensor, bits: int, symmetric: bool, granularity: str,
                     group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Round-to-nearest on a [out, in] weight.

    Returns (codes [out, in] uint8, scale [R, G], zero [R, G], effective group size), with
    R = 1 for per-tensor and R = out otherwise.
    """
    out, cols = weight.shape
    if granularity == "tensor":
        scale, zero = affine_params(weight.reshape(1, 1, -1), bits, symmetric)      # [1, 1]
        codes = quantize_codes(weight, scale, zero, bits, symmetric)
        return codes, scale, zero, cols
    gs = group_size_for(granularity, group_size, cols)
    # zero padding of a ragged last group never widens its range: every range includes 0
    scale, zero = affine_params(grouped(weight.float(), gs), bits, symmetric)        # [out, G]
    codes = quantize_codes(weight, expand_groups(scale, gs, cols), expand_groups(zero, gs, cols),
                           bits, symmetric)
    return codes, scale, zero, gs


def storage_bits(bits: int) -> int:
    """Bits a code occupies on disk and in memory: 4 for codes of <= 4 bits, else 8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"codes must have 1 to 8 bits, got {bits}")
    return 4 if bits <= 4 else 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [..., n] -> packed uint8 [..., ceil(n/2)] (bits <= 4) or a copy (bits == 8)."""
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes.clone()
    if bits != 4:
        raise ValueError(f"can only pack 4- or 8-bit codes, got bits={bits}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError("4-bit packing got a code above 15")
    n = codes.shape[-1]
    if n % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    pairs = codes.reshape(*codes.shape[:-1], -1, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_codes`: packed [..., m] -> uint8 codes [..., n]."""
    if bits == 8:
        return packed.to(torch.uint8)
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)[..., :n]


def pack_bitmask(mask: torch.Tensor) -> torch.Tensor:
    """bool [rows, n] -> uint8 [rows, ceil(n/8)], LSB first (numpy packbits(bitorder='little'))."""
    mask = mask.to(torch.bool)
    if mask.ndim == 1:
        mask = mask.unsqueeze(0)
    n = mask.shape[-1]
    pad = (-n) % 8
    m = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad)).reshape(*mask.shape[:-1], -1, 8)
    weights = (2 ** torch.arange(8, dtype=torch.int32, device=mask.device)).to(torch.uint8)
    return (m * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_bitmask(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 [rows, m] -> bool [rows, n]."""
    bits = (packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=packed.device)) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :n].to(torch.bool)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|ref|^2 / |ref - approx|^2)."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum()
    if float(noise) == 0.0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum() / noise))

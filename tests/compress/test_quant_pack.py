"""Packing and integer grids: pack -> unpack is exact, bitmasks are exact, RTN error bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparseft.compress.quantize.pack import (dequantize_codes, expand_groups, pack_bitmask, pack_codes,
                                             quantize_uniform, sqnr_db, storage_bits, unpack_bitmask,
                                             unpack_codes)


@pytest.mark.parametrize("bits,cols", [(4, 10), (4, 7), (8, 5), (4, 1)])
def test_codes_pack_unpack_round_trip(bits, cols):
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2 ** bits, (6, cols), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (6, (cols * bits + 7) // 8)
    assert torch.equal(unpack_codes(packed, bits, cols), codes)


def test_int4_packing_rejects_wide_codes_and_is_low_nibble_first():
    assert pack_codes(torch.tensor([[1, 2]], dtype=torch.uint8), 4).tolist() == [[0x21]]
    with pytest.raises(ValueError, match="above 15"):
        pack_codes(torch.tensor([[16, 0]], dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="4- or 8-bit"):
        pack_codes(torch.zeros(1, 2, dtype=torch.uint8), 3)
    assert storage_bits(3) == 4 and storage_bits(8) == 8


@pytest.mark.parametrize("cols", [1, 8, 13, 64])
def test_bitmask_round_trip_matches_numpy_packbits(cols):
    mask = torch.rand(5, cols, generator=torch.Generator().manual_seed(cols)) > 0.5
    packed = pack_bitmask(mask)
    ref = np.packbits(mask.numpy(), axis=1, bitorder="little")
    assert np.array_equal(packed.numpy(), ref)
    assert torch.equal(unpack_bitmask(packed, cols), mask)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity,group", [("tensor", 0), ("channel", 0), ("group", 16), ("group", 12)])
def test_rtn_error_is_at_most_half_a_step(symmetric, granularity, group):
    w = torch.randn(8, 40, generator=torch.Generator().manual_seed(1))
    codes, scale, zero, gs = quantize_uniform(w, 4, symmetric, granularity, group or 128)
    assert int(codes.max()) <= 15
    s_full = expand_groups(scale, gs, 40).expand_as(w)
    deq = dequantize_codes(codes, expand_groups(scale, gs, 40), expand_groups(zero, gs, 40))
    assert torch.all((deq - w).abs() <= s_full / 2 + 1e-6)  # every range covers every weight: no clipping
    if granularity == "group":
        assert scale.shape == (8, -(-40 // group))


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_is_exact_on_every_grid(symmetric):
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(2)) + 0.5  # asymmetric ranges
    w[w.abs() < 0.6] = 0.0
    codes, scale, zero, gs = quantize_uniform(w, 4, symmetric, "group", 8)
    deq = dequantize_codes(codes, expand_groups(scale, gs, 32), expand_groups(zero, gs, 32))
    assert torch.all(deq[w == 0] == 0)


def test_sqnr_of_identical_tensors_is_infinite_and_drops_with_noise():
    x = torch.randn(100)
    assert sqnr_db(x, x) == float("inf")
    assert sqnr_db(x, x + 0.01 * torch.randn(100)) > sqnr_db(x, x + 0.1 * torch.randn(100))

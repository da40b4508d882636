"""The FlexAttention backend's mask_mod encodes the same pattern as the reference (torch's
uncompiled flex_attention path, so no compiler is needed), and CPU training with it is refused."""

from __future__ import annotations

import pytest
import torch

from sparseft.attention.config import SparseAttentionConfig
from sparseft.attention.interface import dense_reference
from sparseft.attention.pattern import pattern_mask

pytest.importorskip("torch.nn.attention.flex_attention")
from sparseft.attention.flex import flex_sparse_attention  # noqa: E402

PATTERNS = [dict(window=5), dict(window=4, dilation=2, sinks=2), dict(window=3, stride=7, global_positions=[9]),
            dict(window=3, stride=6, stride_mode="fixed", global_tokens=1),
            dict(window=3, random_blocks=2, random_block_size=8)]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("index", range(len(PATTERNS)))
def test_flex_matches_the_reference(index, causal):
    cfg = SparseAttentionConfig(**PATTERNS[index])
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 40, 8, generator=gen)
    k, v = torch.randn(2, 2, 40, 8, generator=gen), torch.randn(2, 2, 40, 8, generator=gen)
    keep = torch.ones(2, 40, dtype=torch.bool)
    keep[1, -7:] = False
    with torch.no_grad():
        got = flex_sparse_attention(q, k, v, cfg, causal=causal, scaling=0.35, key_padding=keep, compiled=False)
    want = dense_reference(q, k, v, pattern_mask(cfg, 40, 40, causal), scaling=0.35, key_padding=keep)
    assert (got - want).abs().max() <= 1e-5


def test_compiled_flex_refuses_cpu_training():
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    k, v = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    with pytest.raises(ValueError, match="no CPU backward"):
        flex_sparse_attention(q, k, v, SparseAttentionConfig(window=4), causal=True, scaling=0.3)

"""N:M pruning: every group of M consecutive inputs holds at most N nonzeros (exactly N kept)."""

from __future__ import annotations

import pytest
import torch

from sparseft.compress.prune import NMPruneConfig, prune_
from sparseft.compress.prune.common import nm_mask, prunable_weights


def assert_nm(weight: torch.Tensor, n: int, m: int) -> None:
    groups = (weight != 0).reshape(weight.shape[0], -1, m).sum(-1)      # [out, in/m]
    assert (groups == n).all(), f"{int((groups != n).sum())} groups break {n}:{m}"


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_every_group_holds(bert_ner, n, m):
    prune_(bert_ner, NMPruneConfig(n=n, m=m))
    for _, p in prunable_weights(bert_ner, ["Linear"], NMPruneConfig().ignore):
        assert_nm(p.detach(), n, m)


def test_keeps_largest_in_group():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3]])
    mask = nm_mask(w.abs(), 2, 4)
    assert mask.tolist() == [[False, True, True, False, True, False, False, True]]


def test_bad_shapes_and_values():
    with pytest.raises(ValueError, match="multiple of M"):
        nm_mask(torch.ones(2, 6), 2, 4)
    with pytest.raises(ValueError, match="0 < n < m"):
        NMPruneConfig(n=4, m=4)
    assert NMPruneConfig(n=2, m=4).sparsity == 0.5

"""topk_masks: exact counts, the same set as torch.topk, position-order ties, no big copies."""

from __future__ import annotations

import pytest
import torch

from sparseft.masks.mask import topk_masks


def _reference_global(scores: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    ref = torch.zeros(flat.numel(), dtype=torch.bool)
    ref[torch.topk(flat.double(), k).indices] = True
    return ref


@pytest.mark.parametrize("k", [1, 7, 250, 999, 1000])
def test_global_topk_matches_torch_topk_without_ties(k):
    g = torch.Generator().manual_seed(k)
    scores = {"a": torch.randn(20, 10, generator=g), "b": torch.randn(800, generator=g) * 3,
              "c": -torch.rand(5, 20, generator=g)}              # negative scores rank too
    masks = topk_masks(scores, k)
    got = torch.cat([masks[n].reshape(-1) for n in scores])
    assert int(got.sum()) == k
    assert torch.equal(got, _reference_global(scores, k))
    assert all(masks[n].shape == scores[n].shape for n in scores)


def test_ties_are_broken_by_position_and_count_is_exact():
    scores = {"a": torch.tensor([[1.0, 2.0], [2.0, 0.0]]), "b": torch.tensor([2.0, 2.0, 3.0])}
    masks = topk_masks(scores, 3)
    # 3.0 first, then the first two 2.0s in (tensor, index) order: a[0,1] and a[1,0]
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [False, False, True]


def test_negative_zero_infinities_and_half_precision():
    scores = {"x": torch.tensor([-0.0, 0.0, float("-inf"), float("inf"), -1e-30], dtype=torch.float32),
              "h": torch.tensor([1.5, -2.0, 0.25], dtype=torch.float16)}
    masks = topk_masks(scores, 4)
    # -0.0 == 0.0 is a tie, broken by position: the first of the two is taken
    assert masks["x"].tolist() == [True, False, False, True, False]
    assert masks["h"].tolist() == [True, False, True]


def test_per_tensor_quotas_sum_to_k():
    scores = {"a": torch.rand(30), "b": torch.rand(70)}
    masks = topk_masks(scores, 10, allocation="per_tensor")
    assert int(masks["a"].sum()) == 3 and int(masks["b"].sum()) == 7
    assert torch.equal(masks["b"], torch.zeros(70, dtype=torch.bool).index_fill_(
        0, torch.topk(scores["b"], 7).indices, True))


def test_nan_scores_and_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        topk_masks({"w": torch.tensor([1.0, float("nan")])}, 1)
    with pytest.raises(ValueError, match="k must be"):
        topk_masks({"w": torch.ones(3)}, 4)
    with pytest.raises(ValueError, match="allocation"):
        topk_masks({"w": torch.ones(3)}, 1, allocation="rows")


@pytest.mark.parametrize("layout", ["random", "top_values_off_sample"])
def test_sampled_lower_bound_always_admits_k_candidates(layout):
    from sparseft.masks.mask import _lower_bound

    g = torch.Generator().manual_seed(1)
    w = torch.rand(1000, generator=g)
    if layout == "top_values_off_sample":   # stride 10 samples indices 0, 10, ...: hide the top there
        w = torch.zeros(1000)
        w[torch.arange(1000) % 10 != 0] = torch.rand(900, generator=g) + 1.0
    for k in (1, 50, 500, 950):
        t = _lower_bound({"w": w}, k, w.numel(), sample_size=100)
        assert int((w >= t).sum()) >= k

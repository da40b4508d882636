"""Magnitude pruning: exact sparsity per allocation, largest weights kept, heads untouched."""

from __future__ import annotations

import pytest
import torch

from sparseft.compress.prune import MagnitudePruneConfig, prune_, sparsity_report
from sparseft.compress.prune.common import n_pruned, prunable_weights
from sparseft.config.base import config_from_dict


def _zeros(p: torch.Tensor) -> int:
    return int((p == 0).sum())


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.9])
def test_global_sparsity_is_exact(bert_ner, sparsity):
    prune_(bert_ner, MagnitudePruneConfig(sparsity=sparsity))
    rep = sparsity_report(bert_ner)
    assert rep["zeros"] == n_pruned(rep["entries"], sparsity)


def test_per_tensor_and_per_row_are_exact_per_group(bert_ner):
    import copy

    model = copy.deepcopy(bert_ner)
    prune_(bert_ner, MagnitudePruneConfig(sparsity=0.7, allocation="per_tensor"))
    for _, p in prunable_weights(bert_ner, ["Linear"], MagnitudePruneConfig().ignore):
        assert _zeros(p) == n_pruned(p.numel(), 0.7)
    prune_(model, MagnitudePruneConfig(sparsity=0.5, allocation="per_row"))
    for _, p in prunable_weights(model, ["Linear"], MagnitudePruneConfig().ignore):
        assert ((p == 0).sum(1) == n_pruned(p.shape[1], 0.5)).all()


def test_keeps_the_largest_weights_and_ignores_the_head(bert_ner):
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    params = dict(bert_ner.named_parameters())
    before = params[name].detach().clone()
    head = bert_ner.classifier.weight.detach().clone()
    prune_(bert_ner, MagnitudePruneConfig(sparsity=0.5, allocation="per_tensor"))
    after = params[name].detach()
    kept = after != 0
    assert before.abs()[kept].min() >= before.abs()[~kept].max()       # threshold separates them
    assert torch.equal(after[kept], before[kept])                       # kept weights unchanged
    assert torch.equal(bert_ner.classifier.weight, head)                # ignored by default


def test_config_round_trip_and_validation():
    cfg = MagnitudePruneConfig(sparsity=0.3, allocation="per_row", ignore=["classifier"])
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="sparsity"):
        MagnitudePruneConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="allocation"):
        MagnitudePruneConfig(allocation="per_layer")
    with pytest.raises(ValueError, match="regex"):
        MagnitudePruneConfig(targets=["re:("])


def test_target_that_selects_nothing_is_an_error(bert_ner):
    with pytest.raises(ValueError, match="select no"):
        prune_(bert_ner, MagnitudePruneConfig(targets=["Conv2d"]))


def test_prune_rejects_a_non_pruning_config(bert_ner):
    from sparseft.train.config import TrainConfig

    with pytest.raises(TypeError):
        prune_(bert_ner, TrainConfig())

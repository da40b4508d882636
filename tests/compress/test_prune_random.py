"""Random pruning: exact sparsity, reproducible from the seed."""

from __future__ import annotations

import copy

import torch

from sparseft.compress.prune import RandomPruneConfig, prune_, sparsity_report
from sparseft.compress.prune.common import n_pruned


def test_random_exact_and_seeded(bert_ner):
    a, b, c = bert_ner, copy.deepcopy(bert_ner), copy.deepcopy(bert_ner)
    prune_(a, RandomPruneConfig(sparsity=0.6, seed=1))
    prune_(b, RandomPruneConfig(sparsity=0.6, seed=1))
    prune_(c, RandomPruneConfig(sparsity=0.6, seed=2))
    rep = sparsity_report(a)
    assert rep["zeros"] == sum(n_pruned(n, 0.6) for n in _sizes(a))   # per_tensor default
    name = "bert.encoder.layer.1.output.dense.weight"
    pa, pb, pc = (dict(m.named_parameters())[name] for m in (a, b, c))
    assert torch.equal(pa == 0, pb == 0)
    assert not torch.equal(pa == 0, pc == 0)


def _sizes(model):
    from sparseft.compress.prune.common import prunable_weights

    return [p.numel() for _, p in prunable_weights(model, ["Linear"], RandomPruneConfig().ignore)]

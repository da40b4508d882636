"""Movement pruning: one-shot Taylor scores from labelled batches; the accumulating scorer."""

from __future__ import annotations

import pytest
import torch

from sparseft.compress.prune import MovementPruneConfig, prune_, sparsity_report
from sparseft.compress.prune.common import n_pruned
from sparseft.compress.prune.movement import MovementScorer


def test_one_shot_exact_and_needs_data(bert_ner, ner_batches):
    with pytest.raises(ValueError, match="calibration"):
        prune_(bert_ner, MovementPruneConfig(sparsity=0.5))
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in ner_batches]
    with pytest.raises(ValueError, match="labelled"):
        prune_(bert_ner, MovementPruneConfig(sparsity=0.5), batches=unlabelled)
    flags = {n: p.requires_grad for n, p in bert_ner.named_parameters()}
    prune_(bert_ner, MovementPruneConfig(sparsity=0.5), batches=ner_batches)
    rep = sparsity_report(bert_ner)
    assert rep["zeros"] == n_pruned(rep["entries"], 0.5)
    assert flags == {n: p.requires_grad for n, p in bert_ner.named_parameters()}
    assert all(p.grad is None for p in bert_ner.parameters())         # scores use autograd.grad


def test_scorer_accumulates_minus_grad_times_weight():
    lin = torch.nn.Linear(3, 2)
    model = torch.nn.Sequential(lin)
    scorer = MovementScorer(["0.weight"])
    lin.weight.grad = torch.ones_like(lin.weight)
    scorer.update(model)
    scorer.update(model)
    assert torch.allclose(scorer.scores(model)["0.weight"], -2 * lin.weight.detach())


def test_one_shot_movement_that_removes_large_weights_warns(bert_ner, ner_batches, monkeypatch):
    import sparseft.compress.prune.movement as movement

    monkeypatch.setattr(movement, "movement_scores",   # scores that rank the largest weights lowest
                        lambda model, params, batches: {n: -p.detach().abs().float() for n, p in params})
    with pytest.warns(UserWarning, match="larger than their tensor's median"):
        prune_(bert_ner, MovementPruneConfig(sparsity=0.3), batches=ner_batches)

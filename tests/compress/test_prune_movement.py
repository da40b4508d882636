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
                        lambda model, params, batches, rule: {n: -p.detach().abs().float() for n, p in params})
    with pytest.warns(UserWarning, match="larger than their tensor's median"):
        prune_(bert_ner, MovementPruneConfig(sparsity=0.3), batches=ner_batches)


def test_adam_scores_are_the_steps_of_torch_adam_on_the_score():
    """rule='adam' = a score parameter S trained by torch.optim.Adam (lr 1) on dL/dS = grad * W."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3, bias=False)
    model = torch.nn.Sequential(lin)
    scorer = MovementScorer(["0.weight"], rule="adam")
    s = torch.zeros_like(lin.weight, requires_grad=True)
    opt = torch.optim.Adam([s], lr=1.0, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(4):
        lin.weight.grad = torch.randn_like(lin.weight) * 1e-3
        scorer.update(model)
        s.grad = lin.weight.grad * lin.weight.detach()
        opt.step()
    assert torch.allclose(scorer.scores(model)["0.weight"], s.detach(), atol=1e-5)


def test_adam_scores_do_not_grow_with_the_weight_scale():
    """Sum scores scale with |W|; Adam-normalised ones count direction, so a 100x larger weight with
    the same gradient sign history gets the same score."""
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.01, 1.0]]))
    model = torch.nn.Sequential(lin)
    sums, adam = MovementScorer(["0.weight"]), MovementScorer(["0.weight"], rule="adam")
    for _ in range(3):
        lin.weight.grad = torch.ones_like(lin.weight)      # both shrink toward zero
        sums.update(model)
        adam.update(model)
    s_sum, s_adam = sums.scores(model)["0.weight"].flatten().tolist(), adam.scores(model)["0.weight"].flatten().tolist()
    assert s_sum[1] == pytest.approx(100 * s_sum[0])
    assert s_adam[0] == pytest.approx(s_adam[1], rel=1e-4) and s_adam[0] == pytest.approx(-3.0, rel=1e-3)


def test_one_shot_adam_rule_and_validation(bert_ner, ner_batches):
    with pytest.raises(ValueError, match="score must be one of"):
        MovementPruneConfig(score="mean")
    with pytest.raises(ValueError, match="score must be one of"):
        MovementScorer(["x"], rule="mean")
    cfg = MovementPruneConfig(sparsity=0.5, score="adam")
    assert MovementPruneConfig.from_dict(cfg.to_dict()) == cfg
    prune_(bert_ner, cfg, batches=ner_batches)
    rep = sparsity_report(bert_ner)
    assert rep["zeros"] == n_pruned(rep["entries"], 0.5)


def test_the_gradual_stage_passes_the_score_rule_to_its_scorer():
    from sparseft.compress.prune.stage import PruneFinetuneConfig, _scorer

    cfg = PruneFinetuneConfig(pruner="movement", pruner_args={"score": "adam"}, final_sparsity=0.9)
    scorer = _scorer(cfg, cfg.build_pruner(), ["0.weight"], torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert isinstance(scorer, MovementScorer) and scorer.rule == "adam"

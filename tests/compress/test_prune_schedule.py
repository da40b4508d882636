"""Gradual pruning: the cubic schedule, and masks that survive real optimizer steps."""

from __future__ import annotations

import pytest
import torch

from sparseft.compress.prune import MagnitudePruneConfig, nonzero_masks, prune_, sparsity_report
from sparseft.compress.prune.common import n_pruned
from sparseft.compress.prune.movement import MovementScorer
from sparseft.compress.prune.schedule import CubicSchedule, GradualPruner, KeepMasks, MagnitudeScorer

IGNORE = MagnitudePruneConfig().ignore


def test_cubic_schedule_values():
    s = CubicSchedule(0.0, 0.8, start=10, end=110, every=10)
    assert s.sparsity_at(0) == 0.0 and s.sparsity_at(10) == 0.0
    assert s.sparsity_at(60) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)
    assert s.sparsity_at(110) == 0.8 and s.sparsity_at(500) == 0.8
    assert [t for t in range(0, 130) if s.is_prune_step(t)] == list(range(10, 111, 10))
    values = [s.sparsity_at(t) for t in range(10, 111)]
    assert all(b >= a for a, b in zip(values, values[1:]))          # monotone
    with pytest.raises(ValueError, match="exceeds"):
        CubicSchedule(0.5, 0.3, 0, 10)
    with pytest.raises(ValueError, match="start"):
        CubicSchedule(0.0, 0.5, 10, 5)


@pytest.fixture
def ner_data(toy_ner_files, tiny_tokenizer):
    from sparseft.load.data import DataConfig, build_task_data

    train, dev = toy_ner_files
    return build_task_data(DataConfig(task="ner", train=str(train), eval=str(dev), max_length=32), tiny_tokenizer)


@pytest.fixture
def ner_model(tiny_bert_dir, ner_data):
    from sparseft.load.model import load_model

    torch.manual_seed(0)
    return load_model(str(tiny_bert_dir), "ner", labels=ner_data.labels)


def _train(model, data, tmp_path, post_step, steps=6, **kw):
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import TrainConfig
    from sparseft.train.loop import train

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=steps, batch_size=4, lr=1e-2, warmup_ratio=0.0,
                      eval_every="never", progress=False, resume=False, log_every=1, **kw)
    return train(model, data.train, cfg, collate_fn=PadCollator(0), post_step=post_step)


def test_one_shot_masks_survive_training(ner_model, ner_data, tmp_path):
    bert_ner = ner_model
    prune_(bert_ner, MagnitudePruneConfig(sparsity=0.7))
    masks = nonzero_masks(bert_ner)
    before = {n: p.detach().clone() for n, p in bert_ner.named_parameters() if n in masks}
    seen = []

    def check(model, step):      # runs after KeepMasks, i.e. right after every optimizer step
        params = dict(model.named_parameters())
        seen.append(all(bool((params[n][~m] == 0).all()) for n, m in masks.items()))

    _train(bert_ner, ner_data, tmp_path, [KeepMasks(masks), check])
    assert seen and all(seen)
    params = dict(bert_ner.named_parameters())
    assert any(not torch.equal(params[n], before[n]) for n in masks)          # kept weights did train
    assert sparsity_report(bert_ner)["zeros"] == n_pruned(sparsity_report(bert_ner)["entries"], 0.7)


@pytest.mark.parametrize("scorer_cls", [MagnitudeScorer, MovementScorer])
def test_gradual_pruner_reaches_final_sparsity(ner_model, ner_data, tmp_path, scorer_cls):
    bert_ner = ner_model
    from sparseft.compress.prune.common import prunable_weights

    names = [n for n, _ in prunable_weights(bert_ner, ["Linear"], IGNORE)]
    sched = CubicSchedule(0.0, 0.8, start=1, end=5, every=2)
    pruner = GradualPruner(bert_ner, sched, scorer_cls(names), targets=["Linear"], ignore=IGNORE)
    levels = []

    def check(model, step):
        rep = sparsity_report(model)
        levels.append(rep["sparsity"])
        assert rep["zeros"] >= n_pruned(rep["entries"], pruner.current)  # pruned stay zero

    _train(bert_ner, ner_data, tmp_path, [pruner, check], steps=7)
    rep = sparsity_report(bert_ner)
    assert rep["zeros"] == n_pruned(rep["entries"], 0.8)
    assert [h["step"] for h in pruner.history] == [3, 5]          # step 1 is at the initial 0%
    assert levels == sorted(levels) and levels[0] < levels[-1] == pytest.approx(0.8, abs=1e-3)


def test_masks_only_shrink(bert_ner):
    from sparseft.compress.prune.common import prunable_weights

    names = [n for n, _ in prunable_weights(bert_ner, ["Linear"], IGNORE)]
    pruner = GradualPruner(bert_ner, CubicSchedule(0.3, 0.6, start=0, end=2, every=1), MagnitudeScorer(names),
                           targets=["Linear"], ignore=IGNORE)
    first = {n: m.clone() for n, m in pruner.masks.items()}
    with torch.no_grad():   # make pruned weights large: they must not come back
        for n, p in bert_ner.named_parameters():
            if n in first:
                p[~first[n]] = 10.0
    pruner(bert_ner, 1)
    for n, m in pruner.masks.items():
        assert not (m & ~first[n]).any()


def test_resume_rebuilds_masks_from_zeros(bert_ner):
    from sparseft.compress.prune.common import prunable_weights

    prune_(bert_ner, MagnitudePruneConfig(sparsity=0.5))
    names = [n for n, _ in prunable_weights(bert_ner, ["Linear"], IGNORE)]
    pruner = GradualPruner(bert_ner, CubicSchedule(0.0, 0.5, start=0, end=10, every=5), MagnitudeScorer(names),
                           targets=["Linear"], ignore=IGNORE)
    pruner(bert_ner, 7)                # first call after a resume at step 6
    assert pruner.current == pytest.approx(0.5, abs=1e-3)
    assert sparsity_report(bert_ner)["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_movement_pruning_that_removes_large_weights_warns(bert_ner):
    """Movement scores of a fine-tuned model are noise x |W|: when a pruning step removes mostly
    above-median weights the pruner says so once (magnitude pruning removes none of them)."""
    import warnings

    from sparseft.compress.prune.common import prunable_weights
    from sparseft.compress.prune.common import large_weight_share

    names = [n for n, _ in prunable_weights(bert_ner, ["Linear"], IGNORE)]
    params = dict(bert_ner.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # magnitude: no warning
        magnitude = GradualPruner(bert_ner, CubicSchedule(0.3, 0.6, start=0, end=2, every=1),
                                  MagnitudeScorer(names), targets=["Linear"], ignore=IGNORE)
    assert large_weight_share(bert_ner, {}, magnitude.masks) == 0.0
    assert magnitude.history[0]["large_weight_share"] == 0.0
    magnitude.prune_now(bert_ner, 2)   # a later step: measured against the weights still alive
    assert magnitude.history[-1]["large_weight_share"] == 0.0
    scorer = MovementScorer(names)
    scorer.totals = {n: -params[n].detach().abs().float() for n in names}   # big weights "move to zero"
    with pytest.warns(UserWarning, match="larger than their tensor's median"):
        movement = GradualPruner(bert_ner, CubicSchedule(0.3, 0.6, start=0, end=2, every=1), scorer,
                                 targets=["Linear"], ignore=IGNORE)
    assert movement.history[0]["large_weight_share"] > 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # once per run
        movement.prune_now(bert_ner, 2)


def _linear_pruner(sparsities=(0.5, 0.5), regrow=True):
    """One Linear, movement scores set by hand, a 2-event ramp (step 0 and step 1)."""
    lin = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(1.0, 9.0).reshape(2, 4))
    model = torch.nn.Sequential(lin)
    scorer = MovementScorer(["0.weight"])
    scorer.totals = {"0.weight": torch.arange(8.0).reshape(2, 4)}      # entries 0-3 lowest
    pruner = GradualPruner(model, CubicSchedule(*sparsities, start=0, end=1, every=1), scorer,
                           targets=["Linear"], ignore=[], regrow=regrow)
    return model, lin, scorer, pruner


@pytest.mark.filterwarnings("ignore:pruning step")
def test_regrow_brings_back_a_pruned_weight_with_its_held_value():
    model, lin, scorer, pruner = _linear_pruner()
    first = pruner.masks["0.weight"].flatten()
    assert first.tolist() == [False] * 4 + [True] * 4 and (lin.weight.flatten()[:4] == 0).all()
    # entry 0 (held value 1.0) now scores highest, entry 7 lowest: they swap at the next event
    scorer.totals["0.weight"] = torch.tensor([[9.0, 0, 0, 0], [4, 5, 6, -1]])
    pruner.prune_now(model, 1)
    flat = lin.weight.detach().flatten()
    assert pruner.masks["0.weight"].flatten().tolist() == [True, False, False, False, True, True, True, False]
    assert flat.tolist() == [1.0, 0, 0, 0, 5.0, 6.0, 7.0, 0]          # 1.0 came back, 8.0 is now zero
    assert pruner.regrown == 1 and pruner.history[-1]["regrown"] == 1
    kept, held = scorer.held["0.weight"]
    assert held.flatten()[7] == 8.0 and held.flatten()[1] == 2.0


def test_regrow_scores_pruned_entries_with_their_held_value():
    """A zeroed entry's score keeps moving: -grad * W_held, not -grad * 0."""
    model, lin, scorer, pruner = _linear_pruner()
    before = scorer.totals["0.weight"].clone()
    lin.weight.grad = torch.ones_like(lin.weight)
    scorer.update(model)
    w_held = torch.arange(1.0, 9.0).reshape(2, 4)
    assert torch.allclose(scorer.totals["0.weight"] - before, -w_held)


def test_without_regrow_the_same_scores_keep_pruned_entries_pruned():
    model, lin, scorer, pruner = _linear_pruner(regrow=False)
    scorer.totals["0.weight"] = torch.tensor([[9.0, 0, 0, 0], [4, 5, 6, -1]])
    pruner.prune_now(model, 1)
    assert pruner.masks["0.weight"].flatten().tolist() == [False] * 4 + [True] * 4


def test_regrow_needs_movement_scores(bert_ner):
    from sparseft.compress.prune.stage import PruneFinetuneConfig

    with pytest.raises(ValueError, match="regrow needs movement scores"):
        GradualPruner(bert_ner, CubicSchedule(0.0, 0.5, 0, 2), MagnitudeScorer([]), targets=["Linear"],
                      ignore=IGNORE, regrow=True)
    with pytest.raises(ValueError, match="regrow needs pruner 'movement' with schedule 'cubic'"):
        PruneFinetuneConfig(pruner="magnitude", regrow=True)
    assert PruneFinetuneConfig(pruner="movement", regrow=True).regrow

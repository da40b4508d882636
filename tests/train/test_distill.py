"""Knowledge distillation: the KL term's values and masking, gradients reach only the student,
the hidden-state term, and a distilled student moves toward its teacher in a real train() run."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sparseft.config.base import config_from_dict
from sparseft.train.distill import DistillConfig, hidden_mse, kd_kl, make_distill_loss


def test_kl_is_zero_for_identical_logits_and_matches_formula():
    s = torch.randn(2, 3, 5)
    assert kd_kl(s, s.clone(), None, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(2, 3, 5)
    T = 3.0
    p_t = torch.softmax(t / T, -1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert kd_kl(s, t, None, T).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_ignores_masked_positions():
    s, t = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    t2 = t.clone()
    t2[0, 2:] = 100.0 * torch.randn(2, 3)    # padding positions differ wildly
    assert kd_kl(s, t, mask, 1.0).item() == pytest.approx(kd_kl(s, t2, mask, 1.0).item(), rel=1e-6)
    with pytest.raises(ValueError, match="label set"):
        kd_kl(torch.randn(2, 3), torch.randn(2, 4), None, 1.0)


def test_hidden_mse_maps_layers_and_checks_sizes():
    hs = [torch.ones(1, 2, 4) * i for i in range(3)]          # student: embeddings + 2 layers
    ht = [torch.ones(1, 2, 4) * i for i in range(0, 5, 1)]    # teacher: embeddings + 4 layers
    # student 0->teacher 0, 1->2, 2->4: errors 0, 1, 4 -> mean 5/3
    assert hidden_mse(hs, ht, None).item() == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="hidden sizes"):
        hidden_mse([torch.ones(1, 2, 4)], [torch.ones(1, 2, 8)], None)


def test_config_validation_and_round_trip():
    cfg = DistillConfig(temperature=4.0, alpha=0.9, hidden_weight=0.1)
    assert config_from_dict(cfg.to_dict()) == cfg
    for bad in (dict(temperature=0.0), dict(alpha=1.5), dict(hidden_weight=-1.0)):
        with pytest.raises(ValueError):
            DistillConfig(**bad)


@pytest.fixture
def cls_pair(tiny_bert_dir):
    from sparseft.load.model import load_model

    torch.manual_seed(0)
    teacher = load_model(str(tiny_bert_dir), "cls", labels=["a", "b", "c"])
    torch.manual_seed(1)
    student = load_model(str(tiny_bert_dir), "cls", labels=["a", "b", "c"])
    return teacher, student


def _batch(vocab: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(7, vocab, (4, 10), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 0])}


def test_gradients_reach_only_the_student(cls_pair):
    teacher, student = cls_pair
    loss_fn = make_distill_loss(teacher, DistillConfig(alpha=0.7, hidden_weight=0.5))
    batch = _batch(student.config.vocab_size)
    loss = loss_fn(student, batch)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert student.classifier.weight.grad is not None
    assert not teacher.training


def test_alpha_one_needs_no_labels_and_task_loss_needs_them(cls_pair):
    teacher, student = cls_pair
    batch = {k: v for k, v in _batch(student.config.vocab_size).items() if k != "labels"}
    assert make_distill_loss(teacher, DistillConfig(alpha=1.0))(student, batch).item() > 0
    with pytest.raises(ValueError, match="labels"):
        make_distill_loss(teacher, DistillConfig(alpha=0.5))(student, batch)


def test_distillation_pulls_the_student_to_the_teacher(cls_pair, tmp_path):
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import TrainConfig
    from sparseft.train.loop import train

    teacher, student = cls_pair
    gen = torch.Generator().manual_seed(5)
    data = [{"input_ids": torch.randint(7, 60, (8,), generator=gen).tolist(), "attention_mask": [1] * 8,
             "labels": 0} for _ in range(32)]
    batch = PadCollator(0)(data)
    batch.pop("labels")

    def gap():
        student.eval()           # no dropout noise in the measurement
        with torch.no_grad():
            return kd_kl(student(**batch).logits, teacher(**batch).logits, None, 1.0).item()

    before = gap()
    cfg = TrainConfig(output_dir=str(tmp_path / "kd"), max_steps=15, batch_size=8, lr=3e-3, warmup_ratio=0.0,
                      eval_every="never", progress=False, resume=False)
    train(student, data, cfg, collate_fn=PadCollator(0),
          loss_fn=make_distill_loss(copy.deepcopy(teacher), DistillConfig(alpha=1.0, temperature=1.0)))
    assert gap() < 0.5 * before

"""Expert-specialized fine-tuning: routing shares, cumulative-share selection, and training that
changes only the selected experts (every other parameter bit-identical)."""

from __future__ import annotations

import json

import pytest
import torch

from sparseft.config.base import config_from_dict
from sparseft.experts import MoEfyConfig, UpcycleConfig, expert_counters, expert_layers, moefy_
from sparseft.experts.esft import esft_, expert_shares, select_by_share
from sparseft.experts.task_config import ESFTConfig


def _with_labels(batches, n_labels: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in batches:
        labels = torch.randint(0, n_labels, b["input_ids"].shape, generator=gen)
        out.append({**b, "labels": labels.masked_fill(b["attention_mask"] == 0, -100)})
    return out


def test_select_by_share_is_the_shortest_prefix_reaching_the_threshold():
    shares = {"a": torch.tensor([0.1, 0.5, 0.3, 0.1]), "b": torch.tensor([0.25, 0.25, 0.25, 0.25])}
    assert select_by_share(shares, ESFTConfig(threshold=0.5)) == {"a": [1], "b": [0, 1]}
    assert select_by_share(shares, ESFTConfig(threshold=0.8)) == {"a": [1, 2], "b": [0, 1, 2, 3]}
    assert select_by_share(shares, ESFTConfig(threshold=0.8, max_experts=2))["b"] == [0, 1]
    assert select_by_share(shares, ESFTConfig(threshold=0.1, min_experts=2))["a"] == [1, 2]


def test_shares_sum_to_one_and_leave_counters_alone(bert_ner, batches_for):
    moefy_(bert_ner, MoEfyConfig(num_experts=4, top_k=2))
    batches = batches_for(bert_ner, 3)
    before = expert_counters(bert_ner)
    for score in ("token", "gate"):
        shares = expert_shares(bert_ner, batches, score)
        assert len(shares) == 2
        for s in shares.values():
            assert s.shape == (4,) and float(s.sum()) == pytest.approx(1.0, abs=1e-5) and (s >= 0).all()
    assert expert_counters(bert_ner) == before


@pytest.mark.parametrize("kind", ["moefy", "upcycle"])
def test_esft_changes_only_the_selected_experts(kind, bert_ner, batches_for):
    cfg = MoEfyConfig(num_experts=4, top_k=2) if kind == "moefy" else UpcycleConfig(num_experts=4, top_k=2)
    moefy_(bert_ner, cfg)
    batches = _with_labels(batches_for(bert_ner, 4), bert_ner.config.num_labels)
    plan = esft_(bert_ner, ESFTConfig(threshold=0.4, score="token"), batches)
    assert all(1 <= len(v) < 4 for v in plan.selected.values()), plan.selected
    before = {n: p.detach().clone() for n, p in bert_ner.named_parameters()}
    opt = torch.optim.AdamW(plan.param_groups(weight_decay=0.1), lr=1e-2)
    bert_ner.train()
    for b in batches * 2:
        bert_ner(**b).loss.backward()
        opt.step()
        opt.zero_grad()
    plan.remove()
    layers = dict(expert_layers(bert_ner))
    changed_rows = 0
    for name, p in bert_ner.named_parameters():
        layer_name, _, pname = name.rpartition(".")
        if layer_name in layers and pname in ("w_in", "w_gate", "b_in", "w_out"):
            chosen = plan.selected[layer_name]
            for e in range(p.shape[0]):
                same = torch.equal(p[e], before[name][e])
                if e in chosen:
                    changed_rows += not same
                else:
                    assert same, f"{name}[{e}] changed but expert {e} was not selected"
        else:
            assert torch.equal(p, before[name]), f"{name} changed but is frozen"
    assert changed_rows > 0
    summary = plan.summary()
    assert summary["selected_experts"] == sum(len(v) for v in plan.selected.values())
    json.dumps(summary)


def test_esft_config_round_trip_and_errors():
    cfg = ESFTConfig(threshold=0.7, score="gate", max_experts=3, train_router=True)
    assert config_from_dict(json.loads(cfg.to_json())) == cfg
    for bad in ({"threshold": 0}, {"score": "x"}, {"min_experts": 0}, {"min_experts": 3, "max_experts": 2}):
        with pytest.raises(ValueError):
            ESFTConfig(**bad)


def test_esft_needs_an_moe_model(bert_ner, batches_for):
    with pytest.raises(ValueError, match="ExpertFFN"):
        esft_(bert_ner, ESFTConfig(), batches_for(bert_ner, 1))

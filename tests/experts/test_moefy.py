"""MoEfication on tiny BERT / Llama: exactness at k = E, real compute skipping, routers, save/load, configs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sparseft.experts import (ExpertFFN, MoEfyConfig, expert_counters, expert_layers, moefy_, reset_expert_counters,
                              set_routing_, train_router)
from sparseft.experts.cluster import balanced_kmeans
from sparseft.experts.router import select_experts

MODELS = ["bert_ner", "llama_lm"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("clustering", ["kmeans", "coactivation"])
def test_all_experts_active_equals_the_dense_model(name, clustering, request, batches_for, logits):
    model = request.getfixturevalue(name)
    batch = batches_for(model, 1, seed=5)[0]
    dense = logits(model, batch)
    summary = moefy_(model, MoEfyConfig(num_experts=8, top_k=8, clustering=clustering), batches=batches_for(model))
    assert summary["blocks"] == 2 and summary["expert_size"] == 8
    layers = expert_layers(model)
    assert len(layers) == 2 and all(l.num_experts == 8 for _, l in layers)
    # every neuron of the dense block sits in exactly one expert
    for _, layer in layers:
        assert sorted(layer.neurons.reshape(-1).tolist()) == list(range(64))
    torch.testing.assert_close(logits(model, batch), dense, atol=2e-6, rtol=1e-5)


def test_bert_keeps_dropout_residual_and_layernorm_outside_the_experts(bert_ner):
    moefy_(bert_ner, MoEfyConfig(num_experts=4, top_k=4))
    layer = bert_ner.bert.encoder.layer[0]
    assert isinstance(layer.intermediate, ExpertFFN)
    assert type(layer.output.dense).__name__ == "ExpertOutputPassThrough"
    assert isinstance(layer.output.LayerNorm, torch.nn.LayerNorm)


@pytest.mark.parametrize("name", MODELS)
def test_compute_skipping_runs_only_the_chosen_experts(name, request, batches_for, logits):
    model = request.getfixturevalue(name)
    moefy_(model, MoEfyConfig(num_experts=8, top_k=2))
    batch = batches_for(model, 1)[0]
    reset_expert_counters(model)
    logits(model, batch)
    c = expert_counters(model)
    n_tokens = batch["input_ids"].numel()          # the FFN sees padding positions too
    assert c["tokens"] == 2 * n_tokens and c["assignments"] == 2 * n_tokens * 2
    assert c["expert_flops"] * 4 == c["dense_flops"]   # k/E = 1/4 of the dense FFN's multiply-adds
    assert c["expert_calls"] <= 2 * 8

    # an expert no token chooses is never touched: NaN weights there leave the output finite
    layer = expert_layers(model)[0][1]
    with torch.no_grad():
        layer.w_in[2:].fill_(float("nan"))
        layer.w_out[2:].fill_(float("nan"))

    def route_to_first_two(x):
        chosen = torch.zeros(x.shape[0], layer.num_experts, dtype=torch.bool)
        chosen[:, :2] = True
        return chosen, None

    layer.route = route_to_first_two
    reset_expert_counters(model)
    out = logits(model, batch)
    assert torch.isfinite(out).all()
    assert layer.counters()["expert_calls"] == 2
    # and those two experts computed exactly their dense slices
    x = torch.randn(5, layer.hidden_size)
    want = sum(layer.expert_hidden(x, e) @ layer.w_out[e] for e in range(2))
    if layer.b_out is not None:
        want = want + layer.b_out
    torch.testing.assert_close(layer(x), want)


def test_oracle_router_keeps_more_than_a_random_choice(bert_ner, batches_for, logits):
    """At k < E the oracle's experts carry the largest mass: closer to dense than the same k at random."""
    batch = batches_for(bert_ner, 1, seed=3)[0]
    dense = logits(bert_ner, batch)
    moefy_(bert_ner, MoEfyConfig(num_experts=8, top_k=4))
    err_oracle = (logits(bert_ner, batch) - dense).norm()
    gen = torch.Generator().manual_seed(0)
    for _, layer in expert_layers(bert_ner):
        layer.route = (lambda x, e=layer.num_experts: (select_experts(torch.rand(x.shape[0], e, generator=gen), 4), None))
    err_random = (logits(bert_ner, batch) - dense).norm()
    assert err_oracle < err_random


def test_select_experts_fixed_k_and_mass_threshold():
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    fixed = select_experts(scores, 2)
    assert fixed[0].tolist() == [True, True, False, False] and fixed.sum(1).tolist() == [2, 2]
    # 80% of the mass: 2 experts for the peaked token, 4 (capped by top_k) for the flat one
    chosen = select_experts(scores, 4, threshold=0.8)
    assert chosen.sum(1).tolist() == [2, 4]
    assert select_experts(scores, 3, threshold=0.8).sum(1).tolist() == [2, 3]


@pytest.mark.parametrize("name", MODELS)
def test_learned_router_trains_and_its_loss_improves(name, request, batches_for, logits):
    model = request.getfixturevalue(name)
    cfg = MoEfyConfig(num_experts=8, top_k=2, router="mlp", router_hidden=32, router_steps=150, router_lr=3e-3)
    summary = moefy_(model, cfg, batches=batches_for(model, 6))
    stats = summary["router"]
    assert stats["loss_after"] < 0.7 * stats["loss_before"]
    assert all(v["loss_after"] < v["loss_before"] for v in stats["layers"].values())
    # the learned router is what routes now: cheaper than the oracle (the dense up-projection)
    reset_expert_counters(model)
    logits(model, batches_for(model, 1)[0])
    learned = expert_counters(model)["router_flops"]
    set_routing_(model, oracle=True)
    reset_expert_counters(model)
    logits(model, batches_for(model, 1)[0])
    assert 0 < learned < expert_counters(model)["router_flops"]
    set_routing_(model, oracle=False)
    # retraining from calibration batches goes through the dense path and improves it again
    again = train_router(model, batches_for(model, 6, seed=1), steps=50, lr=1e-3)
    assert again["loss_after"] <= again["loss_before"]


@pytest.mark.parametrize("name,task", [("bert_ner", "ner"), ("llama_lm", "lm")])
def test_save_load_round_trip_through_sparseft_load(name, task, request, batches_for, logits, tmp_path):
    import sparseft

    model = request.getfixturevalue(name)
    moefy_(model, MoEfyConfig(num_experts=4, top_k=4, router="mlp", router_hidden=16, router_steps=20),
           batches=batches_for(model))
    set_routing_(model, top_k=2, oracle=False)
    batch = batches_for(model, 1, seed=9)[0]
    want = logits(model, batch)
    model.save_pretrained(tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())
    modules = record["quantization_config"]["modules"]
    kinds = {spec["type"] for spec in modules.values()}
    assert "ExpertFFN" in kinds and all(spec["top_k"] == 2 for spec in modules.values() if spec["type"] == "ExpertFFN")
    assert record["sparseft_experts"]["method"] == "moefy"
    assert {v["num_experts"] for v in record["sparseft_experts"]["layers"].values()} == {4}
    # plain transformers (no sparseft) would meet an empty tensor under the dense block's own name and refuse
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        guards = [k for k in f.keys() if k.endswith(("mlp.down_proj.weight", "intermediate.dense.weight"))]
        assert len(guards) == 2 and all(f.get_slice(k).get_shape() == [0] for k in guards)
    loaded = sparseft.load(str(tmp_path), task=task).eval()
    assert len(expert_layers(loaded)) == 2
    torch.testing.assert_close(logits(loaded, batch), want)
    for (_, a), (_, b) in zip(expert_layers(model), expert_layers(loaded)):
        assert torch.equal(a.neurons, b.neurons) and not b.oracle and b.top_k == 2


def test_balanced_kmeans_gives_equal_clusters_and_finds_planted_groups():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 5
    truth = torch.arange(32) % 4
    feats = centres[truth] + 0.1 * torch.randn(32, 16, generator=gen)
    labels = balanced_kmeans(feats, 4, seed=1)
    assert torch.bincount(labels).tolist() == [8, 8, 8, 8]
    # the same partition as the planted one (up to renaming)
    for c in range(4):
        assert len(set(truth[labels == c].tolist())) == 1
    assert torch.equal(labels, balanced_kmeans(feats, 4, seed=1))


def test_config_round_trip_and_validation(bert_ner):
    from sparseft.config.base import config_from_dict

    cfg = MoEfyConfig(num_experts=32, top_k=8, threshold=0.5, router="mlp", targets=["re:layer\\.0\\."])
    assert config_from_dict(json.loads(cfg.to_json())) == cfg
    for bad, match in [({"top_k": 0}, "top_k"), ({"num_experts": 4, "top_k": 5}, "top_k"),
                       ({"threshold": 1.5}, "threshold"), ({"router": "magic"}, "router"),
                       ({"clustering": "metis"}, "clustering"), ({"router_lr": 0.0}, "router_lr")]:
        with pytest.raises(ValueError, match=match):
            MoEfyConfig(**bad)
    with pytest.raises(ValueError, match="num_experts=5 does not divide d_ff=64"):
        moefy_(bert_ner, MoEfyConfig(num_experts=5, top_k=1))
    with pytest.raises(ValueError, match="needs calibration batches"):
        moefy_(bert_ner, MoEfyConfig(router="mlp"))
    with pytest.raises(ValueError, match="select no FFN block"):
        moefy_(bert_ner, MoEfyConfig(num_experts=4, top_k=1, targets=["re:nothing_here"]))


def test_targets_choose_blocks(bert_ner):
    moefy_(bert_ner, MoEfyConfig(num_experts=4, top_k=2, targets=["re:layer\\.1\\."]))
    assert [n for n, _ in expert_layers(bert_ner)] == ["bert.encoder.layer.1.intermediate"]
    assert isinstance(bert_ner.bert.encoder.layer[0].output.dense, torch.nn.Linear)


def test_mass_threshold_routing_uses_more_experts_for_a_higher_threshold(bert_ner, batches_for, logits):
    batch = batches_for(bert_ner, 1)[0]
    dense = logits(bert_ner, batch)
    moefy_(bert_ner, MoEfyConfig(num_experts=8, top_k=8, threshold=0.5))
    used = {}
    for threshold in (0.5, 0.9, 1.0):
        set_routing_(bert_ner, threshold=threshold)
        reset_expert_counters(bert_ner)
        out = logits(bert_ner, batch)
        used[threshold] = expert_counters(bert_ner)["assignments"]
    assert used[0.5] < used[0.9] <= used[1.0] <= 2 * batch["input_ids"].numel() * 8
    torch.testing.assert_close(out, dense, atol=2e-6, rtol=1e-5)      # all the mass: the dense output


@pytest.mark.parametrize("name", MODELS)
def test_forward_is_finite_in_bf16_and_gradients_reach_the_experts(name, request, batches_for):
    model = request.getfixturevalue(name)
    moefy_(model, MoEfyConfig(num_experts=4, top_k=2, router="mlp", router_steps=5), batches=batches_for(model, 2))
    batch = batches_for(model, 1)[0]
    half = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.isfinite(half(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()).all()
    model.train()
    labels = batch["labels"] if name == "llama_lm" else torch.zeros_like(batch["input_ids"])
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.backward()
    layer = expert_layers(model)[0][1]
    assert layer.w_in.grad is not None and layer.w_in.grad.abs().sum() > 0

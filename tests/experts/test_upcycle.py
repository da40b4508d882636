"""Sparse upcycling on tiny BERT / Llama: dense at init, load-balancing loss finite and logged in training."""

from __future__ import annotations

import json

import pytest
import torch

from sparseft.experts import AuxLoss, UpcycleConfig, collect_aux_loss, expert_layers, moefy_, upcycle_
from sparseft.experts.router import load_balancing_loss


@pytest.mark.parametrize("name", ["bert_ner", "llama_lm"])
def test_upcycled_model_equals_the_dense_model_at_init(name, request, batches_for, logits):
    model = request.getfixturevalue(name)
    batch = batches_for(model, 1, seed=2)[0]
    dense = logits(model, batch)
    summary = upcycle_(model, UpcycleConfig(num_experts=4, top_k=2))
    assert summary == {"blocks": 2, "num_experts": 4, "expert_size": 64, "top_k": 2}
    layer = expert_layers(model)[0][1]
    assert layer.combine == "softmax" and layer.w_in.shape == (4, 64, 32)
    torch.testing.assert_close(logits(model, batch), dense, atol=2e-6, rtol=1e-5)
    # top-2 of 4: half the expert compute of running all four copies, twice the dense FFN's
    c = layer.counters()
    assert c["assignments"] == 2 * c["tokens"] and c["expert_flops"] == 2 * c["dense_flops"]


def test_load_balancing_loss_is_one_when_balanced_and_larger_when_collapsed():
    n, e = 8, 4
    uniform = torch.full((n, e), 1 / e)
    idx = torch.stack([torch.arange(n) % e, (torch.arange(n) + 1) % e], dim=1)
    assert load_balancing_loss(uniform, idx, e).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[0.7, 0.3, 0.0, 0.0]]).repeat(n, 1)
    top = torch.tensor([[0, 1]]).repeat(n, 1)
    assert load_balancing_loss(collapsed, top, e).item() > 1.5


def test_aux_loss_is_added_to_training_and_logged(llama_lm, batches_for, tmp_path):
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import TrainConfig
    from sparseft.train.loop import default_loss, train

    moefy_(llama_lm, UpcycleConfig(num_experts=4, top_k=2, aux_loss_coef=0.05))
    router = expert_layers(llama_lm)[0][1].router.gate.weight
    start = router.detach().clone()
    llama_lm.train()
    llama_lm(**batches_for(llama_lm, 1)[0])
    assert torch.isfinite(collect_aux_loss(llama_lm))
    data = [{"input_ids": ids[m.bool()].tolist(), "labels": ids[m.bool()].tolist()}
            for b in batches_for(llama_lm, 4) for ids, m in zip(b["input_ids"], b["attention_mask"])]
    aux = AuxLoss(0.05, log_path=tmp_path / "aux_loss.jsonl")
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=4, batch_size=4, lr=1e-2, warmup_ratio=0.0,
                      log_every=1, eval_every="epoch", progress=False, mixed_precision="no")
    result = train(llama_lm, data, cfg, collate_fn=PadCollator(0), loss_fn=aux.wrap(default_loss),
                   post_step=[aux.post_step])
    assert result.steps == 4
    assert [r["step"] for r in aux.history] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["aux_loss"])) and r["aux_loss"] >= 0.99 for r in aux.history)
    logged = [json.loads(line) for line in (tmp_path / "aux_loss.jsonl").read_text().splitlines()]
    assert logged == aux.history
    assert not torch.equal(router.detach(), start)      # the router learns


def test_aux_loss_without_upcycled_layers_is_an_error(llama_lm, batches_for):
    from sparseft.train.loop import default_loss

    fn = AuxLoss(0.01).wrap(default_loss)
    with pytest.raises(ValueError, match="no auxiliary loss"):
        fn(llama_lm, batches_for(llama_lm, 1)[0])


def test_upcycled_save_load_round_trip(bert_ner, batches_for, logits, tmp_path):
    import sparseft

    upcycle_(bert_ner, UpcycleConfig(num_experts=3, top_k=1, router_init_std=1.0, seed=4))
    with torch.no_grad():                                # experts that differ, so routing matters
        for _, layer in expert_layers(bert_ner):
            layer.w_out.mul_(torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1))
    batch = batches_for(bert_ner, 1)[0]
    want = logits(bert_ner, batch)
    bert_ner.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["sparseft_experts"]["method"] == "upcycle"
    loaded = sparseft.load(str(tmp_path), task="ner").eval()
    torch.testing.assert_close(logits(loaded, batch), want)


def test_upcycle_config_round_trip_and_validation():
    from sparseft.config.base import config_from_dict

    cfg = UpcycleConfig(num_experts=8, top_k=2, aux_loss_coef=0.02, ignore=["re:layer\\.0\\."])
    assert config_from_dict(json.loads(cfg.to_json())) == cfg
    for bad, match in [({"top_k": 9, "num_experts": 8}, "top_k"), ({"aux_loss_coef": -1.0}, "aux_loss_coef"),
                       ({"router_init_std": 0.0}, "router_init_std"), ({"num_experts": 0}, "num_experts")]:
        with pytest.raises(ValueError, match=match):
            UpcycleConfig(**bad)
    with pytest.raises(TypeError, match="UpcycleConfig"):
        from sparseft.experts import MoEfyConfig

        upcycle_(None, MoEfyConfig())


def test_upcycle_recipe_stage_fine_tunes_with_the_aux_loss_logged(tiny_bert_dir, toy_ner_files, tmp_path):
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run

    train, dev = toy_ner_files
    out = tmp_path / "run"
    recipe = Recipe.from_dict({
        "model": str(tiny_bert_dir), "output_dir": str(out), "seed": 1,
        "data": {"task": "ner", "train": str(train), "eval": str(dev), "max_length": 32},
        "stages": [{"name": "upcycle", "method": "upcycle", "num_experts": 3, "top_k": 2, "aux_loss_coef": 0.1,
                    "max_steps": 3, "batch_size": 8, "lr": 1e-3, "warmup_ratio": 0.0, "log_every": 1,
                    "progress": False, "mixed_precision": "no"},
                   {"name": "save", "method": "save"}]})
    run(recipe, print_report=False)
    section = json.loads((out / "upcycle" / "upcycle.json").read_text())
    assert section["init_max_abs_diff"] < 1e-5 and section["steps"] == 3
    assert section["aux_loss_first"] >= 0.99 and torch.isfinite(torch.tensor(section["aux_loss_last"]))
    logged = [json.loads(line) for line in (out / "upcycle" / "aux_loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3]
    import sparseft

    assert len(expert_layers(sparseft.load(str(out / "model")))) == 2

"""Recipe stage `lora`: rank matching, adapter on disk, merged plain model, only adapters + head train."""

import json

import pytest
import torch

from sparseft.config.recipe import Recipe
from sparseft.pipeline import run
from sparseft.train.lora_stage import LoRAStageConfig, choose_rank, lora_targets

pytest.importorskip("peft")


def _recipe(tiny_bert_dir, toy_ner_files, out, **lora):
    train, dev = toy_ner_files
    stage = {"name": "finetune", "method": "lora", "max_steps": 6, "batch_size": 8, "lr": 5e-3,
             "warmup_ratio": 0.0, "progress": False, "resume": False, "log_every": 1, **lora}
    return Recipe.from_dict({"model": str(tiny_bert_dir), "output_dir": str(out),
                             "data": {"task": "ner", "train": str(train), "eval": str(dev), "max_length": 32},
                             "stages": [stage, {"name": "dev", "method": "eval", "cost": False},
                                        {"name": "save", "method": "save"}]})


def test_rank_for_density_matches_the_sparse_budget():
    lin = [("a", torch.nn.Linear(100, 50)), ("b", torch.nn.Linear(50, 100))]
    cfg = LoRAStageConfig(rank_for_density=0.06)            # 6% of 10,000 entries = 600
    rank, count = choose_rank(lin, cfg)
    assert count == 600 and rank == 2                       # r * (in + out) summed: 300 per rank
    assert choose_rank(lin, LoRAStageConfig(rank=5)) == (5, None)


def test_bad_fields_are_refused():
    with pytest.raises(ValueError, match="rank_for_density"):
        LoRAStageConfig(rank_for_density=0.0)
    with pytest.raises(ValueError, match="rank"):
        LoRAStageConfig(rank=0)


def test_lora_stage_trains_saves_adapter_and_merges(tiny_bert_dir, toy_ner_files, tmp_path):
    out = tmp_path / "run"
    ctx = run(_recipe(tiny_bert_dir, toy_ner_files, out, rank_for_density=0.05), print_report=False)
    sec = ctx.report.sections["finetune"]
    assert sec["rank"] >= 1 and sec["matched_count"] > 0 and sec["lora_layers"] == 12  # 2 layers x 6 Linear
    assert sec["dense_heads"] == ["classifier"]
    head = 32 * len(ctx.data.labels) + len(ctx.data.labels)
    assert sec["trainable_params"] == sec["rank"] * 2 * (4 * (32 + 32) + 2 * (32 + 64)) + head
    adapter = out / "finetune" / "adapter"
    assert (adapter / "adapter_config.json").exists() and sec["adapter_size_mb"] > 0
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == sec["rank"]
    # merged: a plain transformers model with no peft wrappers, every parameter trainable again
    assert type(ctx.model).__name__ == "BertForTokenClassification"
    assert not any("lora" in n for n, _ in ctx.model.named_parameters())
    assert all(p.requires_grad for p in ctx.model.parameters())
    assert (out / "model" / "config.json").exists() and "f1" in ctx.report.sections["dev"]


def test_targets_must_be_linear(tiny_bert_dir):
    from sparseft.load.model import load_model

    model = load_model(str(tiny_bert_dir), "ner", labels=["O", "B-PER", "I-PER"])
    with pytest.raises(ValueError, match="nn.Linear"):
        lora_targets(model, LoRAStageConfig(targets=["Embedding"]))

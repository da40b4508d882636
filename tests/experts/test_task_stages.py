"""Recipe stages `task_experts` and `esft` end to end on a tiny BERT."""

from __future__ import annotations

import json

import torch

from sparseft.config.recipe import Recipe
from sparseft.pipeline import run


def _csv(path, rows):
    path.write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows) + "\n")
    return path


def test_task_experts_stage(tiny_bert_dir, tmp_path):
    from sparseft.export.task_experts import load_task_experts
    from sparseft.load.tokenize import PadCollator

    sent = _csv(tmp_path / "sent.csv", [("john visited paris today", "pos"), ("mary works at the bank", "neg")] * 12)
    topic = _csv(tmp_path / "topic.csv", [("the world cup team", "sport"), ("acme corp bank", "biz"),
                                          ("google new york city", "tech")] * 10)
    out = tmp_path / "run"
    recipe = Recipe.from_dict({
        "model": str(tiny_bert_dir), "output_dir": str(out), "seed": 0,
        "data": {"task": "cls", "train": str(sent), "max_length": 32},
        "stages": [{"name": "tasks", "method": "task_experts", "mask": "fisher", "density": 0.1,
                    "mask_args": {"n_batches": 1}, "steps": 4, "batch_size": 4, "sampling": "proportional",
                    "serve": "topic",
                    "tasks": [{"name": "sent", "train": str(sent), "max_length": 32},
                              {"name": "topic", "train": str(topic), "max_length": 32, "eval_fraction": 0.2}]},
                   {"name": "save", "method": "save"}]})
    ctx = run(recipe, print_report=False)
    section = json.loads((out / "tasks" / "task_experts.json").read_text())
    assert section["tasks"] == ["sent", "topic"] and section["steps"] == 4
    assert set(section["accuracy"]) == {"sent", "topic"}
    assert section["batch_sizes"] == {"sent": 4, "topic": 4}        # proportional: 22 vs 24 train rows
    assert 1.0 < section["stored_vs_one_model"] < 1.5
    assert len((out / "tasks" / "loss.jsonl").read_text().splitlines()) >= 2
    # the run's model is the served task's path; the artifact reloads to the same outputs
    assert ctx.model.config.num_labels == 3
    mt = ctx.state["tasks_model"]
    back = load_task_experts(out / "tasks" / "task_experts")
    batch = PadCollator(0)([ctx.tokenizer("google new york city")] * 2)
    mt.eval()
    with torch.no_grad():
        assert torch.equal(back("sent", **batch), mt("sent", **batch))
        torch.testing.assert_close(ctx.model.eval()(**batch).logits, mt("topic", **batch), rtol=0, atol=1e-6)


def test_esft_stage_after_upcycle(tiny_bert_dir, toy_ner_files, tmp_path):
    train, dev = toy_ner_files
    out = tmp_path / "run"
    recipe = Recipe.from_dict({
        "model": str(tiny_bert_dir), "output_dir": str(out), "seed": 1,
        "data": {"task": "ner", "train": str(train), "eval": str(dev), "max_length": 32},
        "stages": [{"name": "upcycle", "method": "upcycle", "num_experts": 4, "top_k": 1, "finetune": False},
                   {"name": "esft", "method": "esft", "threshold": 0.5, "score_batches": 2, "max_steps": 3,
                    "batch_size": 8, "lr": 1e-3, "warmup_ratio": 0.0, "progress": False, "mixed_precision": "no"}]})
    ctx = run(recipe, print_report=False)
    section = json.loads((out / "esft" / "esft.json").read_text())
    assert section["steps"] == 3 and section["layers"] == 2
    assert 2 <= section["selected_experts"] < 8
    assert "f1_before" in section and "f1_after" in section
    assert all(p.requires_grad for p in ctx.model.parameters())      # a plain trainable model again


def test_shipped_task_experts_recipe_builds():
    from pathlib import Path

    from sparseft.config.recipe import load_recipe
    from sparseft.methods import build_stage_config

    path = Path(__file__).resolve().parents[2] / "recipes" / "minilm_task_experts.yaml"
    assert path.read_text().splitlines()[0].startswith(f"# sparseft run recipes/{path.name}")
    recipe = load_recipe(path)
    method, cfg = build_stage_config(recipe.stages[0], recipe)
    assert method.name == "task_experts" and [t["name"] for t in cfg.tasks] == ["sst2", "ag_news", "banking77"]
    assert cfg.build().mask_config().density == 0.01

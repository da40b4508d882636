"""Recipe stages and the `sparseft prune` CLI, end to end on tiny models and toy data."""

from __future__ import annotations

import json

import pytest

from sparseft.compress.prune import sparsity_report
from sparseft.config.recipe import Recipe
from sparseft.pipeline import run


def _recipe(model_dir, train, dev, out, stages) -> Recipe:
    return Recipe.from_dict({"model": str(model_dir), "output_dir": str(out), "seed": 0,
                             "data": {"task": "ner", "train": str(train), "eval": str(dev), "max_length": 32},
                             "stages": stages})


FAST = {"progress": False, "batch_size": 8, "warmup_ratio": 0.0, "eval_every": "epoch"}


def test_train_then_gradual_prune_with_distillation(tiny_bert_dir, toy_ner_files, tmp_path):
    from transformers import AutoModelForTokenClassification

    train, dev = toy_ner_files
    recipe = _recipe(tiny_bert_dir, train, dev, tmp_path / "run", [
        {"name": "finetune", "method": "train", "max_steps": 3, "lr": 1e-3, **FAST},
        {"name": "gradual", "method": "prune_finetune", "final_sparsity": 0.5, "max_steps": 6, "lr": 1e-3,
         "prune_end": 0.5, "hidden_weight": 0.1, "seq_len": 8, "repeats": 1, **FAST},
        {"name": "dev", "method": "eval", "cost": False},
        {"name": "save", "method": "save"}])
    ctx = run(recipe, print_report=False)
    sec = ctx.report.sections["gradual"]
    assert sec["distill"] is True and sec["pruner"] == "magnitude"
    assert sec["target_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert sec["nonzero_params"] < sec["cost_before"]["nonzero_params"]
    assert sec["schedule_history"][-1]["sparsity"] == pytest.approx(0.5)
    assert "throughput_speedup_b32" in sec and "per_layer_sparsity" in sec
    assert (tmp_path / "run" / "gradual" / "sparsity.json").exists()
    assert json.loads((tmp_path / "run" / "gradual" / "sparseft_prune.json").read_text())["_type"] == \
        "MagnitudePruneConfig"
    # the saved model reloads with plain transformers and is still 50% sparse
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "run" / "model")
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_distillation_refuses_an_untrained_teacher(tiny_bert_dir, toy_ner_files, tmp_path):
    train, dev = toy_ner_files
    recipe = _recipe(tiny_bert_dir, train, dev, tmp_path / "run", [
        {"name": "gradual", "method": "prune_finetune", "max_steps": 2, "cost": False, **FAST}])
    with pytest.raises(ValueError, match="fine-tuned teacher"):
        run(recipe, print_report=False)


def test_oneshot_structured_then_finetune(tiny_bert_dir, toy_ner_files, tmp_path):
    train, dev = toy_ner_files
    recipe = _recipe(tiny_bert_dir, train, dev, tmp_path / "run", [
        {"name": "finetune", "method": "train", "max_steps": 2, **FAST},
        {"name": "struct", "method": "prune_finetune", "schedule": "oneshot", "pruner": "structured",
         "pruner_args": {"ffn_sparsity": 0.5, "importance": "activation"}, "calib_samples": 8,
         "max_steps": 2, "cost": False, **FAST}])
    ctx = run(recipe, print_report=False)
    sec = ctx.report.sections["struct"]
    assert sec["structure"]["intermediate_size"] == 32 and sec["structure_before"]["intermediate_size"] == 64


def test_stage_config_validation():
    from sparseft.compress.prune.stage import PruneFinetuneConfig, PruneStageConfig

    with pytest.raises(ValueError, match="unknown prune method"):
        PruneStageConfig(pruner="nope")
    with pytest.raises(ValueError, match="pruner 'wanda'"):
        PruneStageConfig(pruner="wanda", pruner_args={"sparsity": 2.0})
    with pytest.raises(ValueError, match="cubic"):
        PruneFinetuneConfig(pruner="wanda")
    with pytest.raises(ValueError, match="final_sparsity"):
        PruneFinetuneConfig(pruner_args={"sparsity": 0.5})
    with pytest.raises(ValueError, match="prune_start"):
        PruneFinetuneConfig(prune_start=0.8, prune_end=0.2)
    cfg = PruneFinetuneConfig(final_sparsity=0.9, temperature=4.0)
    assert cfg.train_config().epochs == cfg.epochs and cfg.distill_config().temperature == 4.0


def test_cli_prune_lm_with_calibration(tiny_llama_dir, tmp_path):
    from sparseft.cli.main import main

    text = tmp_path / "wiki.txt"
    text.write_text("\n".join(["the team visited paris and london today ."] * 60) + "\n")
    out = tmp_path / "wanda"
    rc = main(["prune", "--model", str(tiny_llama_dir), "--task", "lm", "--method", "wanda", "--pattern", "2:4",
               "--train", str(text), "--output-dir", str(out), "--no-cost", "--calib-samples", "2"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())["stages"]
    assert metrics["prune"]["target_sparsity"] == pytest.approx(0.5)
    assert metrics["dev"]["perplexity"] > 0
    assert (out / "model" / "config.json").exists()


def test_cli_prune_without_data(bert_ner, tmp_path, capsys):
    from sparseft.cli.main import main

    bert_ner.save_pretrained(tmp_path / "ft")
    out = tmp_path / "p"
    assert main(["prune", "--model", str(tmp_path / "ft"), "--method", "magnitude", "--sparsity", "0.6",
                 "--set", "allocation=per_tensor", "--output-dir", str(out), "--no-cost"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["stages"]["prune"]
    assert metrics["target_sparsity"] == pytest.approx(0.6, abs=1e-3)
    # a data-driven method without data is a clear one-line error (exit code 2)
    assert main(["prune", "--model", str(tmp_path / "ft"), "--method", "wanda", "--output-dir",
                 str(tmp_path / "w")]) == 2
    assert "calibration" in capsys.readouterr().err

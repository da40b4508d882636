"""Factorized folders (save -> load -> same outputs) and the recipe stages."""

from __future__ import annotations

import json

import pytest
import torch

import sparseft.compress.factorize.stage  # noqa: F401  the stages (also imported by sparseft.methods)
from sparseft.compress.factorize import FactorizedLinear, SVDConfig, WhitenedSVDConfig, factorize_
from sparseft.config.recipe import Recipe
from sparseft.load.model import load_model
from sparseft.pipeline import run

FAST = {"progress": False, "batch_size": 8, "warmup_ratio": 0.0, "eval_every": "epoch"}


def _logits(model, batches):
    with torch.no_grad():
        return [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in batches]


def _same(a, b, atol=1e-6):
    return all(torch.allclose(x, y, atol=atol) for x, y in zip(a, b))


def _without_sparseft_quantizer(monkeypatch):
    """transformers as it is without sparseft: its quantizer taken out of the registry."""
    import sparseft  # noqa: F401  (registers it first, so there is something to remove)
    from transformers.quantizers import auto

    auto.AUTO_QUANTIZER_MAPPING.get("sparseft")  # the registry module is imported: registration ran
    monkeypatch.delitem(auto.AUTO_QUANTIZER_MAPPING, "sparseft")
    monkeypatch.delitem(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, "sparseft")


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_save_load_gives_the_same_outputs_and_plain_transformers_refuses(which, bert_ner, llama_lm, ner_batches,
                                                                         lm_batches, tmp_path, monkeypatch):
    import sparseft  # noqa: F401  registers the transformers quantizer
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    model, batches, task = (bert_ner, ner_batches, "ner") if which == "bert" else (llama_lm, lm_batches, "lm")
    factorize_(model, WhitenedSVDConfig(ratio=0.3), batches=batches, progress=False)
    model.save_pretrained(tmp_path / "f")
    entry = json.loads((tmp_path / "f" / "config.json").read_text())["sparseft_factorization"]
    assert entry["method"] == "whiten_svd" and entry["config"]["_data"]["ratio"] == 0.3
    assert entry["layers"] and all(v["rank"] >= 1 for v in entry["layers"].values())
    loaded = load_model(str(tmp_path / "f"), task)
    assert any(isinstance(m, FactorizedLinear) for m in loaded.modules())
    assert _same(_logits(model, batches), _logits(loaded, batches))
    qc = json.loads((tmp_path / "f" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "sparseft" and {m["type"] for m in qc["modules"].values()} == {"FactorizedLinear"}
    auto = AutoModelForTokenClassification if task == "ner" else AutoModelForCausalLM
    assert _same(_logits(model, batches), _logits(auto.from_pretrained(tmp_path / "f").eval(), batches))
    _without_sparseft_quantizer(monkeypatch)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):       # never silently random
        auto.from_pretrained(tmp_path / "f")


@pytest.mark.parametrize("quant", ["dynamic_int8", "rtn4"])
def test_quantized_factors_save_and_load(quant, bert_ner, ner_batches, tmp_path):
    from sparseft.compress.quantize import DynamicInt8Config, RTNConfig, quantize_

    factorize_(bert_ner, WhitenedSVDConfig(ratio=0.3), batches=ner_batches, progress=False)
    quantize_(bert_ner, DynamicInt8Config() if quant == "dynamic_int8" else RTNConfig(bits=4))
    bert_ner.save_pretrained(tmp_path / "q")
    loaded = load_model(str(tmp_path / "q"), "ner")
    layer = loaded.bert.encoder.layer[0].attention.self.query
    assert isinstance(layer, FactorizedLinear) and type(layer.up).__name__ != "Linear"
    assert _same(_logits(bert_ner, ner_batches), _logits(loaded, ner_batches))


def test_inconsistent_folder_fails_clearly(bert_ner, tmp_path):
    factorize_(bert_ner, SVDConfig(ratio=0.3), progress=False)
    bert_ner.save_pretrained(tmp_path / "f")
    cfg_path = tmp_path / "f" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    name = next(iter(cfg["quantization_config"]["modules"]))
    cfg["quantization_config"]["modules"][name]["rank"] += 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises((ValueError, RuntimeError), match="mismatch|lacks"):
        load_model(str(tmp_path / "f"), "ner")


def test_merged_model_loads_with_plain_transformers(bert_ner, ner_batches, tmp_path):
    from transformers import AutoModelForTokenClassification

    from sparseft.compress.factorize import merge_factorized_

    factorize_(bert_ner, SVDConfig(ratio=0.3), progress=False)
    factorized = _logits(bert_ner, ner_batches)
    merge_factorized_(bert_ner)
    bert_ner.save_pretrained(tmp_path / "m")
    plain = AutoModelForTokenClassification.from_pretrained(tmp_path / "m")
    assert _same(factorized, _logits(plain, ner_batches), atol=1e-5)


def _recipe(model_dir, train, dev, out, stages) -> Recipe:
    return Recipe.from_dict({"model": str(model_dir), "output_dir": str(out), "seed": 0,
                             "data": {"task": "ner", "train": str(train), "eval": str(dev), "max_length": 32},
                             "stages": stages})


def test_train_then_factorize_finetune_with_distillation(tiny_bert_dir, toy_ner_files, tmp_path):
    train, dev = toy_ner_files
    recipe = _recipe(tiny_bert_dir, train, dev, tmp_path / "run", [
        {"name": "finetune", "method": "train", "max_steps": 3, "lr": 1e-3, **FAST},
        {"name": "recover", "method": "factorize_finetune", "factorizer": "fisher_svd",
         "factorizer_args": {"ratio": 0.3}, "calib_samples": 8, "max_steps": 2, "lr": 1e-3, "hidden_weight": 0.1,
         "seq_len": 8, "repeats": 1, **FAST},
        {"name": "dev", "method": "eval", "cost": False},
        {"name": "save", "method": "save"}])
    ctx = run(recipe, print_report=False)
    sec = ctx.report.sections["recover"]
    assert sec["factorizer"] == "fisher_svd" and sec["distill"] is True and sec["steps"] == 2
    assert {"dense_f1", "f1_after_factorize", "delta_f1", "throughput_speedup_b32", "size_ratio"} <= set(sec)
    assert sec["param_reduction"] == pytest.approx(0.3, abs=0.02) and sec["targeted_params_after"] < \
        sec["targeted_params_before"]
    assert len(sec["per_layer_rank"]) == sec["targeted_layers"]
    assert sec["cost_after"]["params"] < sec["cost_before"]["params"]
    assert json.loads((tmp_path / "run" / "recover" / "sparseft_factorize.json").read_text())["_type"] == \
        "FisherSVDConfig"
    loaded = load_model(str(tmp_path / "run" / "model"), "ner")
    ids = torch.randint(7, 50, (2, 9))
    batch = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    assert _same(_logits(ctx.model, batch), _logits(loaded, batch))


def test_factorize_stage_logs_baseline_and_delta_and_sparse_recovery(tiny_bert_dir, toy_ner_files, tmp_path):
    train, dev = toy_ner_files
    recipe = _recipe(tiny_bert_dir, train, dev, tmp_path / "run", [
        {"name": "finetune", "method": "train", "max_steps": 2, "lr": 1e-3, **FAST},
        {"name": "fact", "method": "factorize", "factorizer": "asvd",
         "factorizer_args": {"energy": 0.8, "targets": ["re:attention"]},
         "calib_samples": 8, "cost": False},
        {"name": "recover", "method": "factorize_finetune", "factorizer": "svd",
         "factorizer_args": {"ratio": 0.2, "targets": ["re:intermediate"]}, "mode": "sparse", "density": 0.2,
         "max_steps": 2, "cost": False, **FAST}])
    ctx = run(recipe, print_report=False)
    sec = ctx.report.sections["fact"]
    assert sec["delta_f1"] == pytest.approx(sec["f1_after_factorize"] - sec["dense_f1"])
    assert sec["target_energy"] == 0.8 and "cost_before" not in sec
    rec = ctx.report.sections["recover"]
    assert rec["mode"] == "sparse" and rec["sparse_selected"] > 0
    # the second stage factorized the layers the first left alone
    assert all(isinstance(m, FactorizedLinear) for n, m in ctx.model.named_modules() if n.endswith("intermediate.dense"))


def test_stage_config_errors():
    from sparseft.compress.factorize.stage import FactorizeFinetuneConfig, FactorizeStageConfig

    with pytest.raises(ValueError, match="unknown factorize method 'pca'"):
        FactorizeStageConfig(factorizer="pca")
    with pytest.raises(ValueError, match="factorizer 'svd': .*exactly one"):
        FactorizeStageConfig(factorizer_args={"ratio": 0.2, "energy": 0.5})
    with pytest.raises(ValueError, match="mode must be one of"):
        FactorizeFinetuneConfig(mode="lora")

"""Half-precision weights as a quantizer: 2x smaller, reloadable by plain transformers in bf16."""

from __future__ import annotations

import pytest
import torch

from sparseft.compress.quantize import DynamicInt8Config, HalfPrecisionConfig, quantize_


def _ids(model, seed=0):
    return torch.randint(7, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_cast_close_to_fp32_and_half_the_size(bert_ner, dtype, tmp_path):
    from sparseft.export.compressed import export_compressed

    ids = _ids(bert_ner)
    with torch.no_grad():
        ref = bert_ner(input_ids=ids).logits
    quantize_(bert_ner, HalfPrecisionConfig(dtype=dtype))
    want = getattr(torch, dtype)
    assert {p.dtype for p in bert_ner.parameters()} == {want} and bert_ner.config.dtype == want
    with torch.no_grad():
        out = bert_ner(input_ids=ids).logits
    assert out.dtype == want
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
    assert (out.float().argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    stats = export_compressed(bert_ner, tmp_path / "c")
    assert 1.8 < stats["compression_ratio"] <= 2.0  # 2x less the file header


def test_bf16_folder_loads_with_plain_transformers(bert_ner, tmp_path):
    from transformers import AutoModelForTokenClassification

    quantize_(bert_ner, HalfPrecisionConfig())
    bert_ner.save_pretrained(tmp_path / "m")
    ids = _ids(bert_ner, 1)
    for dtype in (torch.bfloat16, "auto"):
        loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "m", dtype=dtype).eval()
        assert next(loaded.parameters()).dtype == torch.bfloat16
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=ids).logits, bert_ner(input_ids=ids).logits)


def test_refuses_a_model_with_int8_layers(bert_ner):
    quantize_(bert_ner, DynamicInt8Config(backend="int_mm"))
    with pytest.raises(ValueError, match="already has quantized layers"):
        quantize_(bert_ner, HalfPrecisionConfig())
    with pytest.raises(ValueError, match="dtype must be one of"):
        HalfPrecisionConfig(dtype="float8")


def test_recipe_half_reports_delta_size_and_saves_bf16(tiny_bert_dir, toy_ner_files, tmp_path):
    from transformers import AutoModelForTokenClassification

    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run

    train, dev = toy_ner_files
    recipe = Recipe.from_dict({
        "model": str(tiny_bert_dir), "output_dir": str(tmp_path / "run"), "seed": 1,
        "data": {"task": "ner", "train": str(train), "eval": str(dev)},
        "stages": [{"name": "quant", "method": "quantize", "quantizer": "half", "cost": False},
                   {"name": "dev", "method": "eval", "cost": False},
                   {"name": "save", "method": "save"},
                   {"name": "export", "method": "export"}]})
    ctx = run(recipe, print_report=False)
    assert 1.8 < ctx.state["quant"]["compression_ratio"] <= 2.0
    assert "f1" in ctx.report.sections["dev"]
    assert ctx.state["export"]["reload"]["agreement"] > 0.9
    saved = next(p.parent for p in (tmp_path / "run").rglob("config.json") if (p.parent / "model.safetensors").exists()
                 and "compressed" not in str(p))
    loaded = AutoModelForTokenClassification.from_pretrained(saved, dtype="auto")
    assert next(loaded.parameters()).dtype == torch.bfloat16

"""Recipe stages `quantize` + `export` and the CLI verbs `sparseft quantize` / `sparseft export`
on the tiny BERT and toy CoNLL files."""

from __future__ import annotations

import json

import pytest
import torch

from sparseft.cli.main import main
from sparseft.compress.quantize import QuantLinear
from sparseft.export.compressed import load_compressed


def test_recipe_gptq_then_export_reloads_identically(tiny_bert_dir, toy_ner_files, tmp_path):
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run

    train, dev = toy_ner_files
    recipe = Recipe.from_dict({
        "model": str(tiny_bert_dir), "output_dir": str(tmp_path / "run"), "seed": 1,
        "data": {"task": "ner", "train": str(train), "eval": str(dev)},
        "stages": [
            {"name": "quant", "method": "quantize", "quantizer": "gptq",
             "quantizer_args": {"bits": 4, "group_size": 16}, "calib_samples": 8, "calib_batch_size": 4,
             "cost": True, "seq_len": 8, "repeats": 1},
            {"name": "dev", "method": "eval", "cost": False},
            {"name": "export", "method": "export"},
        ]})
    ctx = run(recipe, print_report=False)
    quant = ctx.state["quant"]
    assert quant["quantized_layers"] == {"gptq": 12} and quant["calib_examples"] == 8
    assert quant["compression_ratio"] > 1.0 and "after" in quant
    assert (tmp_path / "run" / "quant" / "sparseft_quantize.json").exists()
    export = ctx.state["export"]
    assert export["reload"]["agreement"] == 1.0 and export["reload"]["max_abs_logit_diff"] == 0.0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "export" in json.dumps(metrics)
    loaded = load_compressed(tmp_path / "run" / "compressed")
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == 12


def test_stage_configs_validate_quantizer_names_and_args():
    from sparseft.compress.quantize.stage import QuantizeStageConfig
    from sparseft.export.compressed_stage import ExportConfig

    with pytest.raises(ValueError, match="valid choices: dynamic_int8, gptq, half, kmeans, nf4, rtn, static_int8"):
        QuantizeStageConfig(quantizer="awq")
    with pytest.raises(ValueError, match="quantizer 'rtn'.*bits"):
        QuantizeStageConfig(quantizer="rtn", quantizer_args={"bits": 5})
    with pytest.raises(ValueError, match="format must be one of"):
        ExportConfig(format="gguf")


@pytest.fixture
def saved_ner_model(tiny_bert_dir, tmp_path):
    from sparseft.load.model import load_model

    torch.manual_seed(0)
    model = load_model(str(tiny_bert_dir), "ner", labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    path = tmp_path / "ner_model"
    model.save_pretrained(path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(path)
    return path


def test_cli_quantize_without_data_and_export(saved_ner_model, tmp_path, capsys):
    out = tmp_path / "q"
    rc = main(["quantize", "--model", str(saved_ner_model), "--method", "rtn", "--set", "bits=4",
               "--set", "granularity=group", "--set", "group_size=16", "--output-dir", str(out), "--no-cost"])
    assert rc == 0
    model = load_compressed(out / "compressed")
    assert model.config.id2label[1] == "B-PER"
    assert all(m.bits == 4 for m in model.modules() if isinstance(m, QuantLinear))
    assert (out / "report.md").exists()

    rc = main(["export", str(saved_ner_model), "--output", str(tmp_path / "e"), "--json", str(tmp_path / "e.json")])
    assert rc == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["verify"]["max_abs_logit_diff"] == 0.0 and report["fp32_mb"] > 0
    assert "smaller" in capsys.readouterr().out


def test_cli_quantize_with_data_evaluates_and_checks_reload(saved_ner_model, toy_ner_files, tmp_path):
    train, dev = toy_ner_files
    out = tmp_path / "q"
    rc = main(["quantize", "--model", str(saved_ner_model), "--method", "dynamic_int8", "--train", str(train),
               "--eval", str(dev), "--output-dir", str(out), "--no-cost"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert '"agreement": 1.0' in text and "f1" in text


def test_cli_reports_bad_quantizer_as_one_line_error(saved_ner_model, tmp_path, capsys):
    rc = main(["quantize", "--model", str(saved_ner_model), "--method", "awq", "--output-dir", str(tmp_path)])
    assert rc == 2
    assert "unknown quantize method 'awq'" in capsys.readouterr().err


def test_cli_static_int8_export_reloads_through_load_and_from_pretrained(saved_ner_model, toy_ner_files, tmp_path):
    """`sparseft quantize --method static_int8` calibrates on --train, exports the compressed
    checkpoint (format 3), and it reloads with the calibrated ranges: same logits via sparseft.load,
    and again after save_pretrained -> from_pretrained (after `import sparseft`)."""
    import sparseft
    from transformers import AutoModelForTokenClassification

    from sparseft.compress.quantize import StaticInt8Linear

    train, dev = toy_ner_files
    out = tmp_path / "q"
    rc = main(["quantize", "--model", str(saved_ner_model), "--method", "static_int8", "--train", str(train),
               "--eval", str(dev), "--calib-samples", "8", "--output-dir", str(out), "--no-cost"])
    assert rc == 0
    assert '"agreement": 1.0' in (out / "metrics.json").read_text()           # the export stage's reload check
    meta = json.loads((out / "compressed" / "compression_config.json").read_text())
    assert meta["format_version"] == 3 and {m["type"] for m in meta["modules"].values()} == {"StaticInt8Linear"}
    model = sparseft.load(str(out / "compressed"), "ner").eval()
    layers = [m for m in model.modules() if isinstance(m, StaticInt8Linear)]
    assert len(layers) == 12 and all(m.input_range.tolist() != [-1.0, 1.0] for m in layers)  # calibrated
    ids = torch.randint(7, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "sp")
    again = AutoModelForTokenClassification.from_pretrained(tmp_path / "sp").eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
        assert torch.equal(model(input_ids=ids).logits, load_compressed(out / "compressed")(input_ids=ids).logits)

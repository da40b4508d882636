"""`sparseft factorize` end to end on a tiny model, then `sparseft eval` on its folder."""

from __future__ import annotations

import json

import pytest

from sparseft.compress.factorize import FactorizedLinear


def test_cli_factorize_then_eval_end_to_end(tiny_bert_dir, toy_ner_files, tmp_path, capsys):
    from transformers import AutoModelForTokenClassification

    from sparseft.cli.main import main

    train, dev = toy_ner_files
    out = tmp_path / "f"
    rc = main(["factorize", "--model", str(tiny_bert_dir), "--task", "ner", "--train", str(train), "--eval", str(dev),
               "--method", "whiten_svd", "--ratio", "0.3", "--calib-samples", "8", "--max-length", "32",
               "--no-cost", "--output-dir", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    section = metrics.get("sections", metrics).get("factorize") or metrics["stages"]["factorize"]
    assert section["factorizer"] == "whiten_svd"
    ba = metrics["stages"]["dev"]   # the input model is scored first: before -> after in the dev section
    assert ba["delta_f1"] == pytest.approx(ba["f1_after"] - ba["f1_before"])
    assert ba["weights_mb_after"] < ba["weights_mb_before"]
    assert "factorize before -> after: f1 " in capsys.readouterr().out
    assert main(["eval", str(out / "model"), "--data", str(dev), "--max-length", "32"]) == 0
    assert "f1" in capsys.readouterr().out
    import sparseft  # noqa: F401  after which from_pretrained rebuilds the factorized layers
    assert any(isinstance(m, FactorizedLinear)
               for m in AutoModelForTokenClassification.from_pretrained(out / "model").modules())
    # --merge: a plain dense folder; a data-aware method without data is a one-line error
    rc = main(["factorize", "--model", str(tiny_bert_dir), "--task", "ner", "--train", str(train), "--eval", str(dev),
               "--method", "svd", "--rank", "4", "--merge", "--no-cost", "--max-length", "32",
               "--output-dir", str(tmp_path / "m")])
    assert rc == 0
    AutoModelForTokenClassification.from_pretrained(tmp_path / "m" / "model")
    assert main(["factorize", "--model", str(tiny_bert_dir), "--task", "ner", "--method", "asvd",
                 "--output-dir", str(tmp_path / "x")]) == 2
    assert "needs calibration data" in capsys.readouterr().err

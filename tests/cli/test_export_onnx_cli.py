"""`sparseft export --format onnx [--int8]` on a tiny BERT folder."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_cli_export_onnx(tiny_bert_dir, tmp_path, capsys):
    from sparseft.cli.main import main
    from sparseft.export.onnx import INT8_NAME, ONNX_NAME
    from sparseft.load.model import load_model

    torch.manual_seed(0)
    src = tmp_path / "model"
    load_model(str(tiny_bert_dir), "ner", labels=["O", "B-PER", "I-PER"]).save_pretrained(src)
    rc = main(["export", str(src), "--format", "onnx", "--output", str(tmp_path / "o"), "--json", str(tmp_path / "o.json")])
    assert rc == 0 and (tmp_path / "o" / ONNX_NAME).exists() and not (tmp_path / "o" / INT8_NAME).exists()
    assert "onnxruntime check (fp32)" in capsys.readouterr().out
    assert json.loads((tmp_path / "o.json").read_text())["verify"]["fp32"]["argmax_agreement"] == 1.0

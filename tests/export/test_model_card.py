"""Model cards: front matter, metrics table, how-to-load section, errors."""

from __future__ import annotations

import pytest

from sparseft.export.model_card import python_snippet, render_model_card, write_model_card


def test_card_has_front_matter_metrics_and_loading(tmp_path):
    path = write_model_card(tmp_path, kind="compressed", base_model="minilm", task="ner",
                            metrics={"eval": {"f1": 0.91234, "note": "ok"}, "size_mb": 3},
                            how_to_load=python_snippet("import sparseft\nm = sparseft.load('x')"),
                            extra={"sparsity": 0.5})
    text = path.read_text()
    head = text.split("---")[1]
    assert "library_name: sparseft" in head and "base_model: minilm" in head
    assert "pipeline_tag: token-classification" in head and "- compressed" in head
    assert "| eval | f1 | 0.9123 |" in text and "| - | size_mb | 3 |" in text
    assert "## How to load" in text and "sparseft.load('x')" in text and "**sparsity**: 0.5" in text


def test_yaml_values_are_quoted_when_needed():
    text = render_model_card(kind="dense", how_to_load="x", base_model="/abs/path: weird")
    assert 'base_model: "/abs/path: weird"' in text


def test_card_requires_how_to_load_and_a_folder(tmp_path):
    with pytest.raises(ValueError, match="how_to_load"):
        render_model_card(kind="dense", how_to_load=" ")
    with pytest.raises(ValueError, match="not a folder"):
        write_model_card(tmp_path / "missing", kind="dense", how_to_load="x")

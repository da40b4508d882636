"""Loading a model prints one line of ours, not transformers' LOAD REPORT table and bars."""

from __future__ import annotations

import logging

from sparseft.load.model import load_model


def test_new_head_is_one_line_and_transformers_settings_are_restored(tiny_bert_dir, capfd):
    from transformers.utils import logging as hf_logging

    level = logging.getLogger("transformers.modeling_utils").level
    assert hf_logging.is_progress_bar_enabled()
    load_model(str(tiny_bert_dir), "ner", labels=["O", "B-PER", "I-PER"])
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in out + err and "Loading weights" not in out + err
    assert "num_labels" not in out + err
    assert "not sharded" not in out + err   # transformers' TP-plan check on a plain load
    lines = [line for line in out.splitlines() if line.startswith("new head:")]
    assert len(lines) == 1 and "classifier" in lines[0] and "3 labels" in lines[0], out
    assert logging.getLogger("transformers.modeling_utils").level == level
    assert hf_logging.is_progress_bar_enabled()


def test_reloading_a_task_model_with_its_labels_prints_no_head_line(tiny_bert_dir, tmp_path, capfd):
    model = load_model(str(tiny_bert_dir), "ner", labels=["O", "B-PER", "I-PER"])
    model.save_pretrained(tmp_path / "m")
    capfd.readouterr()
    load_model(str(tmp_path / "m"), "ner")
    out, err = capfd.readouterr()
    assert "new head" not in out and "LOAD REPORT" not in out + err

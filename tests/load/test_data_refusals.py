"""Training data that cannot make the task's model is refused naming the file (one class ->
not a regression head; NER with only 'O'); unknown labels point at the offending line; the
data's max_length must fit the model's learned position table."""

from __future__ import annotations

import pytest

from sparseft.load.data import DataConfig, build_eval_data, build_task_data, check_max_length, position_limit
from sparseft.load.readers import DataError


def test_one_class_classification_is_refused(tmp_path, tiny_tokenizer):
    path = tmp_path / "one.csv"
    path.write_text("text,label\n" + "".join(f"john visited paris {i},travel\n" for i in range(20)))
    with pytest.raises(DataError, match=f"{path}: every training example has the label 'travel'.*at least 2 classes"):
        build_task_data(DataConfig(task="cls", train=str(path)), tiny_tokenizer)


def test_ner_with_only_o_tags_is_refused(tmp_path, tiny_tokenizer):
    path = tmp_path / "o.conll"
    path.write_text("\n\n".join("john\tO\nvisited\tO\nparis\tO" for _ in range(10)) + "\n")
    with pytest.raises(DataError, match=f"{path}: every tag is 'O'"):
        build_task_data(DataConfig(task="ner", train=str(path)), tiny_tokenizer)


def test_given_labels_are_not_second_guessed(tmp_path, tiny_tokenizer):
    path = tmp_path / "o.conll"
    path.write_text("john\tO\nvisited\tO\n")
    data = build_eval_data(DataConfig(task="ner"), tiny_tokenizer, ["O", "B-PER", "I-PER"], str(path))
    assert len(data.eval) == 1


def test_unknown_label_names_the_offending_line(tmp_path, tiny_tokenizer):
    path = tmp_path / "dev.conll"
    path.write_text("-DOCSTART- O\n\njohn\tB-PER\nsmith\tI-PER\nvisited\tO\nparis\tB-LOC\n\nmary\tB-PER\n")
    with pytest.raises(DataError, match=f"{path}:6: unknown label 'B-LOC'"):
        build_eval_data(DataConfig(task="ner"), tiny_tokenizer, ["O", "B-PER", "I-PER"], str(path))


def test_max_length_beyond_learned_positions_is_refused(tiny_bert_dir, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from sparseft.load.model import load_model

    bert = load_model(str(tiny_bert_dir), "ner", labels=["O", "B-PER", "I-PER"])
    assert position_limit(bert) == 128
    check_max_length(DataConfig(task="ner", max_length=128), bert)
    with pytest.raises(ValueError, match=r"data.max_length=512 is more than the model's 128 positions.*--max-length 128"):
        check_max_length(DataConfig(task="ner", max_length=512), bert)
    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)  # rotary positions: no hard table
    assert position_limit(llama) is None
    check_max_length(DataConfig(task="lm", block_size=4096), llama)

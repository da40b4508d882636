import pytest
import torch

from sparseft.load.readers import DataError
from sparseft.load.tokenize import (IGNORE_INDEX, PadCollator, cls_label_list, ner_label_list, tokenize_cls,
                                    tokenize_lm, tokenize_ner)


def test_first_subtoken_carries_the_label(tiny_tokenizer):
    recs = [{"tokens": ["john", "visitedx", "paris"], "tags": ["B-PER", "O", "B-LOC"], "where": "f:1"}]
    label2id = {"O": 0, "B-PER": 1, "B-LOC": 2}
    feat = tokenize_ner(recs, tiny_tokenizer, label2id)[0]
    toks = tiny_tokenizer.convert_ids_to_tokens(feat["input_ids"])
    assert toks[0] == "[CLS]" and toks[-1] == "[SEP]"
    assert len(toks) > 5  # "visitedx" splits into several pieces
    kept = [(t, label) for t, label in zip(toks, feat["labels"]) if label != IGNORE_INDEX]
    assert [label for _, label in kept] == [1, 0, 2]
    assert [t for t, _ in kept][0] == "john" and not kept[1][0].startswith("##")
    assert feat["n_words"] == 3


def test_truncation_records_words_that_fit(tiny_tokenizer):
    recs = [{"tokens": ["paris"] * 20, "tags": ["B-LOC"] * 20, "where": "f:1"}]
    feat = tokenize_ner(recs, tiny_tokenizer, {"O": 0, "B-LOC": 1}, max_length=8)[0]
    assert len(feat["input_ids"]) == 8 and feat["n_words"] == 6


def test_unknown_label_names_file_and_line(tiny_tokenizer):
    recs = [{"tokens": ["john"], "tags": ["B-ANIMAL"], "where": "dev.conll:42"}]
    with pytest.raises(DataError, match="dev.conll:42: unknown label 'B-ANIMAL'"):
        tokenize_ner(recs, tiny_tokenizer, {"O": 0})
    with pytest.raises(DataError, match="x.csv:3"):
        tokenize_cls([{"text": "hi", "label": "zzz", "where": "x.csv:3"}], tiny_tokenizer, {"a": 0})


def test_label_lists_are_stable():
    recs = [{"tags": ["B-PER", "I-PER", "O", "B-LOC"]}, {"tags": ["B-MISC"]}]
    assert ner_label_list(recs) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER"]
    assert cls_label_list([{"label": "10"}, {"label": "2"}, {"label": "1"}]) == ["1", "2", "10"]
    assert cls_label_list([{"label": "b"}, {"label": "a"}]) == ["a", "b"]


def test_lm_blocks_and_collator(tiny_tokenizer):
    text = " ".join(["john visited paris ."] * 40)
    blocks = tokenize_lm(text, tiny_tokenizer, block_size=16)
    assert all(len(b["input_ids"]) == 16 for b in blocks) and len(blocks) >= 5
    assert blocks[0]["input_ids"][0] == tiny_tokenizer.bos_token_id
    feats = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [1, -100, 2], "n_words": 2},
             {"input_ids": [5], "attention_mask": [1], "labels": [3], "n_words": 1}]
    batch = PadCollator(pad_id=0)(feats)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [5, 0, 0]]))
    assert torch.equal(batch["labels"][1], torch.tensor([3, IGNORE_INDEX, IGNORE_INDEX]))
    assert torch.equal(batch["attention_mask"][1], torch.tensor([1, 0, 0]))
    cls = PadCollator(0, pad_to_multiple_of=8)([{"input_ids": [1, 2], "attention_mask": [1, 1], "labels": 4}])
    assert cls["input_ids"].shape == (1, 8) and cls["labels"].tolist() == [4]

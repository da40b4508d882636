"""Tests for sparseft.load.readers: exact records from small fixture files, and DataError messages
that name the file and the right line for malformed ones.

Fixtures live in tests/fixtures/data/ (each file's comments in the generator are its line numbers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparseft.load.readers import (
    DataError,
    entity_types,
    read_classification,
    read_clinc150,
    read_conll,
    read_jsonl,
    read_text,
)

DATA = Path(__file__).parent.parent / "fixtures" / "data"


def _err(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# ------------------------------------------------------------------------------------------ CoNLL

def test_conll2003_iob1_tokens_tags_and_docstart_anywhere():
    path = DATA / "conll2003_iob1.txt"
    recs = read_conll(path)
    assert [r["tokens"] for r in recs] == [
        ["John", "Smith", "visited", "Paris", "."],
        ["Berlin", "Hamburg", "and", "Acme", "Germany"],
        ["EU", "rejects", "German", "call"],
        ["Peter", "Blackburn"],
        ["Nadim", "Ladki"],
    ]
    assert [r["tags"] for r in recs] == [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],  # I-PER I-PER O I-LOC -> B-PER I-PER O B-LOC
        ["B-LOC", "B-LOC", "O", "B-ORG", "B-LOC"],  # I-LOC B-LOC stays; I-ORG I-LOC -> B-ORG B-LOC
        ["B-ORG", "O", "B-MISC", "O"],
        ["B-PER", "I-PER"],
        ["B-PER", "I-PER"],
    ]
    # where = first line of each sentence (1-based)
    assert [r["where"] for r in recs] == [f"{path}:{n}" for n in (3, 9, 15, 20, 24)]
    assert entity_types(recs) == ["LOC", "MISC", "ORG", "PER"]


def test_conll_keep_scheme_leaves_iob1_tags():
    recs = read_conll(DATA / "conll2003_iob1.txt", scheme="keep")
    assert recs[0]["tags"] == ["I-PER", "I-PER", "O", "I-LOC", "O"]
    assert recs[1]["tags"] == ["I-LOC", "B-LOC", "O", "I-ORG", "I-LOC"]


def test_conll_columns_can_be_chosen():
    recs = read_conll(DATA / "conll2003_iob1.txt", token_col=1, tag_col=2, scheme="keep")
    assert recs[0]["tokens"][:2] == ["NNP", "NNP"]
    assert recs[0]["tags"][:2] == ["B-NP", "I-NP"]


def test_wnut_two_column_bio_is_unchanged_by_bio_scheme():
    path = DATA / "wnut_bio.conll"
    recs = read_conll(path)
    assert recs == read_conll(path, scheme="keep")  # valid BIO: conversion is a no-op
    assert len(recs) == 3
    assert recs[0]["tokens"] == ["@paulwalk", "It", "'s", "the", "Empire", "State", "Building"]
    assert recs[0]["tags"] == ["O"] * 4 + ["B-location", "I-location", "I-location"]
    assert recs[1]["tags"] == ["O", "B-creative-work", "I-creative-work", "O", "B-person", "B-person"]
    assert recs[2] == {"tokens": ["lol", "!"], "tags": ["O", "O"], "where": f"{path}:17"}
    assert entity_types(recs) == ["creative-work", "location", "person"]


def test_conll_crlf_and_bom(tmp_path):
    path = tmp_path / "crlf.conll"
    path.write_bytes("\ufeffa\tB-X\r\nb\tI-X\r\n\t\r\nc\tO\r\n".encode("utf-8"))
    recs = read_conll(path)
    assert [r["tokens"] for r in recs] == [["a", "b"], ["c"]]
    assert [r["where"] for r in recs] == [f"{path}:1", f"{path}:4"]


def test_conll_wrong_column_count_names_file_and_line():
    with pytest.raises(DataError) as ei:
        read_conll(DATA / "conll_bad_columns.txt")
    msg = _err(ei)
    assert "conll_bad_columns.txt:5:" in msg
    assert "expected 4 columns, got 3" in msg
    assert "call NN O" in msg


def test_conll_bad_tag_names_file_line_and_tag():
    with pytest.raises(DataError) as ei:
        read_conll(DATA / "conll_bad_tag.txt")
    msg = _err(ei)
    assert "conll_bad_tag.txt:6:" in msg
    assert "'E-PER'" in msg


@pytest.mark.parametrize("bad", ["PER", "B-", "b-PER", "I_PER", "0"])
def test_conll_rejects_malformed_tags(tmp_path, bad):
    path = tmp_path / "t.conll"
    path.write_text(f"ok\tO\nx\t{bad}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.conll:2: invalid tag"):
        read_conll(path)


def test_conll_one_column_file():
    with pytest.raises(DataError) as ei:
        read_conll(DATA / "conll_one_column.txt")
    assert "conll_one_column.txt:3:" in _err(ei)
    assert "at least 2 columns" in _err(ei)


@pytest.mark.parametrize("name", ["conll_empty.txt", "conll_docstart_only.txt"])
def test_conll_no_sentences(name):
    with pytest.raises(DataError) as ei:
        read_conll(DATA / name)
    assert _err(ei) == f"{DATA / name}: no sentences found"


def test_conll_missing_file_is_data_error(tmp_path):
    path = tmp_path / "nope.conll"
    with pytest.raises(DataError, match="nope.conll: file not found"):
        read_conll(path)


def test_conll_tag_col_out_of_range():
    with pytest.raises(DataError, match=r"wnut_bio\.conll:1: tag_col=5 is out of range"):
        read_conll(DATA / "wnut_bio.conll", tag_col=5)


def test_conll_unknown_scheme_lists_choices():
    with pytest.raises(ValueError, match="bio, keep") as ei:
        read_conll(DATA / "wnut_bio.conll", scheme="iobes")
    assert not isinstance(ei.value, DataError)


def test_conll_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "latin1.conll"
    path.write_bytes(b"a\tO\nb\xe9\tO\n")
    with pytest.raises(DataError, match=r"latin1\.conll:2: not valid UTF-8"):
        read_conll(path)


# ---------------------------------------------------------------------------------- classification

def test_csv_with_header_quoted_comma_and_newline():
    path = DATA / "cls_header.csv"
    recs = read_classification(path)
    assert [(r["text"], r["label"]) for r in recs] == [
        ("great movie", "pos"),
        ("slow, but worth it", "pos"),
        ("first line\nsecond line", "neg"),
        ("terrible", "neg"),
    ]
    # a row's line is where it starts; the quoted newline makes 'terrible' line 6
    assert [r["where"] for r in recs] == [f"{path}:{n}" for n in (2, 3, 4, 6)]


def test_tsv_strips_text_and_labels_are_str():
    recs = read_classification(DATA / "cls.tsv", text_col="sentence")
    assert [(r["text"], r["label"]) for r in recs] == [
        ("hide new secretions from the parental units", "0"),
        ("that loves its characters", "1"),
    ]


def test_jsonl_skips_blank_lines_and_stringifies_labels():
    path = DATA / "cls.jsonl"
    recs = read_classification(path)
    assert recs == [
        {"text": "set a timer for ten minutes", "label": "timer", "where": f"{path}:1"},
        {"text": "what is the weather", "label": "3", "where": f"{path}:3"},
    ]


def test_headerless_csv_with_columns_and_joined_text():
    path = DATA / "ag_news_headerless.csv"
    recs = read_classification(path, columns=["label", "title", "description"],
                               text_col=["title", "description"])
    assert [r["label"] for r in recs] == ["3", "4", "2"]
    assert recs[0]["text"] == "Fears for T N pension Unions say they are disappointed."
    assert recs[1]["text"] == "The Race is On SPACE.com - TORONTO, Canada -- A second team."
    assert recs[2]["text"] == "Only a description here."  # empty title: no leading space
    assert recs[0]["where"] == f"{path}:1"  # no header: the first row is data


def test_explicit_fmt_overrides_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("text\tlabel\nhello\tgreet\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.txt: cannot infer the format"):
        read_classification(path)
    assert read_classification(path, fmt="tsv")[0]["label"] == "greet"


def test_missing_column_lists_available_columns():
    path = DATA / "cls_header.csv"
    with pytest.raises(DataError) as ei:
        read_classification(path, label_col="category")
    msg = _err(ei)
    assert "cls_header.csv" in msg and "'category'" in msg
    assert "available columns: 'text', 'label'" in msg


def test_missing_key_in_jsonl_names_line():
    with pytest.raises(DataError) as ei:
        read_classification(DATA / "cls.jsonl", text_col=["text", "title"])
    msg = _err(ei)
    assert "cls.jsonl:1:" in msg and "'title'" in msg and "'label'" in msg


def test_columns_naming_missing_text_col():
    with pytest.raises(DataError, match="available columns: 'label', 'title'"):
        read_classification(DATA / "ag_news_headerless.csv", columns=["label", "title"],
                            text_col="description")


def test_bad_json_line_number():
    with pytest.raises(DataError) as ei:
        read_classification(DATA / "cls_bad_json.jsonl")
    assert "cls_bad_json.jsonl:3: invalid JSON" in _err(ei)


def test_wrong_field_count_line_number():
    with pytest.raises(DataError) as ei:
        read_classification(DATA / "cls_bad_fields.csv")
    assert "cls_bad_fields.csv:4: expected 2 fields" in _err(ei)
    assert "got 3" in _err(ei)


def test_headerless_wrong_field_count():
    with pytest.raises(DataError, match=r"ag_news_headerless\.csv:1: expected 2 fields"):
        read_classification(DATA / "ag_news_headerless.csv", columns=["label", "text"])


def test_empty_label_line_number():
    with pytest.raises(DataError) as ei:
        read_classification(DATA / "cls_empty_label.tsv")
    assert "cls_empty_label.tsv:3: empty label" in _err(ei)


def test_empty_text_line_number(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text('text,label\n"  ",a\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"e\.csv:2: empty text"):
        read_classification(path)


@pytest.mark.parametrize("name,content", [("e.csv", ""), ("h.csv", "text,label\n"),
                                          ("e.jsonl", "\n\n")])
def test_empty_classification_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=f"{name}: no records found"):
        read_classification(path)


def test_unterminated_quote_is_data_error(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('text,label\nok,a\n"never closed,b\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"q\.csv:3: malformed CSV"):
        read_classification(path)


def test_unknown_fmt_is_value_error():
    with pytest.raises(ValueError, match="auto, csv, tsv, jsonl"):
        read_classification(DATA / "cls_header.csv", fmt="parquet")


# ---------------------------------------------------------------------------------------- CLINC150

def test_clinc150_train_with_and_without_oos():
    path = DATA / "clinc150_small.json"
    recs = read_clinc150(path)
    assert [(r["text"], r["label"]) for r in recs] == [
        ("set a timer for ten minutes", "timer"),
        ("translate hello to french", "translate"),
        ("how is the weather today", "weather"),
        ("how old is the universe", "oos"),
        ("tell me about dolphins", "oos"),
    ]
    assert recs[0]["where"] == f"{path}:train[0]"
    assert recs[3]["where"] == f"{path}:oos_train[0]"
    no_oos = read_clinc150(path, include_oos=False)
    assert [r["label"] for r in no_oos] == ["timer", "translate", "weather"]


def test_clinc150_include_oos_false_also_drops_oos_inside_the_split(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": [["hi", "greet"], ["what is a llama", "oos"]]}),
                    encoding="utf-8")
    assert [r["label"] for r in read_clinc150(path)] == ["greet", "oos"]  # no oos_train key: fine
    assert [r["label"] for r in read_clinc150(path, include_oos=False)] == ["greet"]


def test_clinc150_val_split():
    recs = read_clinc150(DATA / "clinc150_small.json", split="val")
    assert [r["label"] for r in recs] == ["timer", "oos"]


@pytest.mark.parametrize("split", ["test", "dev"])
def test_clinc150_bad_split_lists_keys(split):
    with pytest.raises(DataError) as ei:
        read_clinc150(DATA / "clinc150_small.json", split=split)
    msg = _err(ei)
    assert "clinc150_small.json" in msg and repr(split) in msg
    assert "'train', 'val', 'oos_train', 'oos_val'" in msg


def test_clinc150_malformed_item(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": [["ok", "a"], ["no intent"]]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.json:train\[1\]: expected \[utterance, intent\]"):
        read_clinc150(path)


def test_clinc150_bad_json_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{\n "train": [\n  ["a", "b"],\n ]\n}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.json:4: invalid JSON"):
        read_clinc150(path)


# ------------------------------------------------------------------------------------ text, JSONL

def test_read_text():
    assert read_text(DATA / "lm_text.txt").startswith("First Citizen:\nBefore we")


def test_read_text_blank_and_missing(tmp_path):
    with pytest.raises(DataError, match=r"lm_blank\.txt: file is empty"):
        read_text(DATA / "lm_blank.txt")
    with pytest.raises(DataError, match="missing.txt: file not found"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_text(tmp_path)


def test_read_jsonl_generic():
    recs = read_jsonl(DATA / "generic.jsonl")
    assert recs == [{"question": "1+1?", "answer": "#### 2"},
                    {"question": "2+2?", "answer": "#### 4", "n": [1, 2]}]


def test_read_jsonl_errors(tmp_path):
    with pytest.raises(DataError, match=r"generic_not_object\.jsonl:2: expected a JSON object, got list"):
        read_jsonl(DATA / "generic_not_object.jsonl")
    with pytest.raises(DataError, match=r"cls_bad_json\.jsonl:3: invalid JSON"):
        read_jsonl(DATA / "cls_bad_json.jsonl")
    array = tmp_path / "array.json"
    array.write_text('[\n{"a": 1}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"array\.json:1: invalid JSON.*one JSON document"):
        read_jsonl(array)

"""Chat data formats: detection, conversion to messages, errors, DeepSpeed-Chat --data_split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chat_fixtures import format_records, shared_data

from sparseft.chat.formats import (FORMATS, data_split_indices, detect_format, read_chat_file,
                                   records_to_conversations, to_messages)
from sparseft.load.readers import DataError


@pytest.mark.parametrize("fmt", FORMATS[1:])
def test_detect_and_convert_every_format(fmt):
    records = format_records()[fmt]
    assert detect_format(records[0]) == fmt
    convs, used = records_to_conversations(records)
    assert used == fmt
    for conv in convs:
        assert conv[-1]["role"] == "assistant"
        assert {m["role"] for m in conv} <= {"system", "user", "assistant"}


def test_conversions_are_exact():
    r = format_records()
    assert to_messages(r["alpaca"][0], "alpaca") == [
        {"role": "user", "content": "john works at\n\ngoogle bank"}, {"role": "assistant", "content": "london club"}]
    assert to_messages(r["alpaca"][1], "alpaca")[0] == {"role": "user", "content": "mary lives"}
    assert to_messages(r["dschat"][1], "dschat") == [
        {"role": "user", "content": "mary works"}, {"role": "assistant", "content": "london"},
        {"role": "user", "content": "smith lives"}, {"role": "assistant", "content": "berlin city"}]
    assert to_messages(r["human_assistant"][1], "human_assistant") == [
        {"role": "user", "content": "mary works"}, {"role": "assistant", "content": "london"},
        {"role": "user", "content": "smith lives"}, {"role": "assistant", "content": "york club"}]
    assert to_messages(r["gsm8k"][0], "gsm8k")[1]["content"] == "paris team\n#### 72"
    assert to_messages(r["prompt_completion"][0], "prompt_completion") == [
        {"role": "user", "content": "john lives in"}, {"role": "assistant", "content": "new york city"}]
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert to_messages(sharegpt, "messages")[1] == {"role": "assistant", "content": "hello"}
    # a DeepSpeed-Chat prompt without Human:/Assistant: markers is one user turn
    assert to_messages({"prompt": "plain question", "chosen": "answer"}, "dschat")[0] == {
        "role": "user", "content": "plain question"}


def test_dolly_file_is_detected():
    path = shared_data("dolly_open_qa", "validation.jsonl")
    convs, fmt = records_to_conversations(read_chat_file(path)[:50])
    assert fmt == "human_assistant"
    assert all([m["role"] for m in c] == ["user", "assistant"] for c in convs)


def test_bad_records_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="cannot detect the chat format"):
        detect_format({"foo": 1})
    with pytest.raises(DataError, match="no non-empty assistant message"):
        to_messages({"messages": [{"role": "user", "content": "hi"}]}, "messages", "f:1")
    with pytest.raises(DataError, match="unknown role 'robot'"):
        to_messages({"messages": [{"role": "robot", "content": "hi"}]}, "messages")
    with pytest.raises(DataError, match="needs field 'output'"):
        to_messages({"instruction": "x"}, "alpaca", "train.jsonl: record 3")
    with pytest.raises(ValueError, match="unknown chat format"):
        records_to_conversations([{"text": "x"}], "sharegpt")
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    assert read_chat_file(path) == [{"question": "q", "answer": "a"}]


def _dschat_reference(n, spec, index, seed):
    """DeepSpeed-Chat's get_raw_dataset_split_index + get_shuffle_idx, transcribed."""
    splits = [float(s) for s in spec.split(",")]
    splits = [s / sum(splits) for s in splits]
    idx = [0]
    for i, s in enumerate(splits):
        idx.append(idx[i] + int(round(s * float(n))))
    diff = idx[-1] - n
    for i in range(1, len(idx)):
        idx[i] -= diff
    shuffle = np.arange(0, n, 1, dtype=np.uint32)
    np.random.RandomState(seed=seed).shuffle(shuffle)
    return shuffle[idx[index]:idx[index + 1]].tolist()


@pytest.mark.parametrize("n,spec", [(10, "2,4,4"), (10, "1,1,1"), (1001, "6,2,2"), (7, "10,0,0")])
def test_data_split_matches_deepspeed_chat(n, spec):
    parts = [data_split_indices(n, spec, i, seed=1234) for i in range(len(spec.split(",")))]
    for i, part in enumerate(parts):
        assert part == _dschat_reference(n, spec, i, 1234)
    assert sorted(sum(parts, [])) == list(range(n))  # a partition of all records
    # DeepSpeed-Chat's rounding quirk: the excess shifts every boundary after the first
    assert [len(p) for p in [data_split_indices(10, "1,1,1", i, 1234) for i in range(3)]] == [4, 3, 3]
    with pytest.raises(ValueError, match="out of range"):
        data_split_indices(n, spec, 5, seed=1)
    with pytest.raises(ValueError, match="comma-separated"):
        data_split_indices(n, "a,b", 0, seed=1)

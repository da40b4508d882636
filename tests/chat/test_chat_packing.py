"""Packing: per-example masking is kept, no label and no attention crosses examples."""

from __future__ import annotations

import pytest
import torch
from chat_fixtures import format_records

from sparseft.chat.formats import records_to_conversations
from sparseft.chat.loss import ResponseLoss, token_loss_sum
from sparseft.chat.packing import ChatCollator, model_inputs, pack_features
from sparseft.chat.template import resolve_template, tokenize_conversations
from sparseft.load.tokenize import IGNORE_INDEX


@pytest.fixture(scope="module")
def feats(plain_tokenizer):
    # the fallback template: the tiny Llama's vocabulary has no ChatML tokens
    convs = []
    for fmt in ("messages", "alpaca", "dschat", "gsm8k", "human_assistant", "prompt_completion"):
        convs += records_to_conversations(format_records()[fmt])[0]
    return tokenize_conversations(convs, resolve_template(plain_tokenizer, "fallback"), max_seq_len=64)


def test_pack_keeps_every_example_and_its_labels(feats):
    rows = pack_features(feats, 64)
    assert len(rows) < len(feats)  # several examples per row
    assert sum(r["n_examples"] for r in rows) == len(feats)
    seen = []
    for row in rows:
        assert len(row["input_ids"]) <= 64
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        bounds = starts + [len(row["input_ids"])]
        for a, b in zip(bounds, bounds[1:]):
            seg_ids, seg_labels = row["input_ids"][a:b], row["labels"][a:b]
            match = [f for f in feats if f["input_ids"] == seg_ids]
            assert match, "a packed segment must be one whole example"
            assert seg_labels == match[0]["labels"]  # per-example masking unchanged
            assert seg_labels[0] == IGNORE_INDEX     # no label crosses into this example
            assert row["position_ids"][a:b] == list(range(b - a))
            seen.append(tuple(seg_ids))
    assert sorted(seen) == sorted(tuple(f["input_ids"]) for f in feats)
    with pytest.raises(ValueError, match="longer than max_seq_len"):
        pack_features(feats, 8)


def test_packed_forward_equals_unpacked(feats, tiny_chat_model):
    """Block-diagonal attention through position_ids: packed logits == per-example logits."""
    model = tiny_chat_model.eval()
    rows = pack_features(feats, 64)
    batch = ChatCollator(pad_id=0)(rows)
    assert "position_ids" in model_inputs(batch) and "attention_mask" not in model_inputs(batch)
    with torch.no_grad():
        packed = model(**model_inputs(batch)).logits                     # [R, T, V]
        for r, row in enumerate(rows):
            starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
            for a, b in zip(starts, starts[1:]):
                alone = model(input_ids=torch.tensor([row["input_ids"][a:b]])).logits[0]  # [b-a, V]
                torch.testing.assert_close(packed[r, a:b], alone, atol=1e-5, rtol=1e-4)


def test_packed_loss_equals_unpacked_loss(feats, tiny_chat_model):
    model = tiny_chat_model.eval()
    collate = ChatCollator(pad_id=0)
    with torch.no_grad():
        packed = ResponseLoss()(model, collate(pack_features(feats, 64)))
        padded = ResponseLoss()(model, collate(feats))
        # token-weighted mean of the per-example losses, computed one example at a time
        sums = [token_loss_sum(model(**model_inputs(collate([f]))).logits, collate([f])["labels"]) for f in feats]
        reference = sum(s for s, _ in sums) / sum(n for _, n in sums)
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-5)


def test_collator_pads_position_ids_as_a_separate_segment():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1], "position_ids": [0, 1, 0]},
            {"input_ids": [5], "labels": [-100], "attention_mask": [1], "position_ids": [0]}]
    b = ChatCollator(pad_id=0)(rows)
    assert b["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert b["labels"].tolist()[1] == [-100, -100, -100]
    assert b["attention_mask"].tolist()[1] == [1, 0, 0]

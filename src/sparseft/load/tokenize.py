"""One tokenization step from plain records to model features, plus the padding collator.

Records come from `sparseft.load.readers` (plain dicts). Features are dicts of Python int lists:
  input_ids [T], attention_mask [T], labels [T] (NER: one per sub-token, -100 where ignored;
  classification: a single int; LM: a copy of input_ids).
NER alignment: the first sub-token of each word carries the word's label, the other sub-tokens
get -100 so they are ignored by the loss and by evaluation.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from sparseft.load.readers import DataError

IGNORE_INDEX = -100


def ner_label_list(records: Sequence[dict]) -> list[str]:
    """'O' first, then B-/I- for every entity type seen, types sorted: a stable label order."""
    types = sorted({t[2:] for r in records for t in r["tags"] if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def cls_label_list(records: Sequence[dict]) -> list[str]:
    """Sorted label strings; numeric labels sort numerically ('2' before '10')."""
    labels = {r["label"] for r in records}
    if all(re.fullmatch(r"-?\d+", x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _label_id(label: str, label2id: dict[str, int], where: str) -> int:
    try:
        return label2id[label]
    except KeyError:
        raise DataError(f"{where}: unknown label {label!r}; the model knows {sorted(label2id)}") from None


def _word_line(rec: dict, j: int) -> str:
    """'path:LINE' of word `j` of a CoNLL record ('where' is its first line; one word per line)."""
    where = rec.get("where", "?")
    path, _, line = where.rpartition(":")
    return f"{path}:{int(line) + j}" if path and line.isdigit() else where


def tokenize_ner(records: Sequence[dict], tokenizer, label2id: dict[str, int], *, max_length: int = 128,
                 ) -> list[dict]:
    """Tokenize pre-split words; words cut off by `max_length` are recorded in `n_words`.

    Each feature keeps `n_words` (words that fit) so evaluation can pad predictions for truncated
    words with 'O' and still compare against the full gold sequence.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("NER alignment needs a fast tokenizer (word_ids); this tokenizer is slow")
    feats = []
    batch = tokenizer([r["tokens"] for r in records], is_split_into_words=True, truncation=True,
                      max_length=max_length)
    for i, rec in enumerate(records):
        word_ids = batch.word_ids(i)
        tag_ids = [_label_id(t, label2id, _word_line(rec, j)) for j, t in enumerate(rec["tags"])]
        labels, prev, n_words = [], None, 0
        for w in word_ids:
            if w is None or w == prev:
                labels.append(IGNORE_INDEX)
            else:
                labels.append(tag_ids[w])
                n_words += 1
            prev = w
        feat = {k: list(batch[k][i]) for k in batch.keys()}
        feat["labels"] = labels
        feat["n_words"] = n_words
        feats.append(feat)
    return feats


def tokenize_cls(records: Sequence[dict], tokenizer, label2id: dict[str, int], *, max_length: int = 128,
                 ) -> list[dict]:
    batch = tokenizer([r["text"] for r in records], truncation=True, max_length=max_length)
    feats = []
    for i, rec in enumerate(records):
        feat = {k: list(batch[k][i]) for k in batch.keys()}
        feat["labels"] = _label_id(rec["label"], label2id, rec.get("where", "?"))
        feats.append(feat)
    return feats


def tokenize_lm(text: str, tokenizer, *, block_size: int = 256) -> list[dict]:
    """Tokenize one long text and cut it into non-overlapping blocks of `block_size` tokens.

    The final partial block is dropped (as in the HF run_clm example) unless it is the only one.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    if len(ids) < 2:
        raise DataError("text is too short to form a training example")
    n = max(1, len(ids) // block_size)
    blocks = [ids[i * block_size:(i + 1) * block_size] for i in range(n)]
    return [{"input_ids": b, "attention_mask": [1] * len(b), "labels": list(b)} for b in blocks]


class PadCollator:
    """Pads a list of features to the longest in the batch; returns LongTensors.

    input_ids are padded with `pad_id`, attention_mask/token_type_ids with 0, labels with -100.
    Keys other than those (e.g. `n_words`) are dropped: they are bookkeeping, not model inputs.
    """

    MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, feats: Sequence[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in feats)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        out: dict[str, torch.Tensor] = {}
        for key in self.MODEL_KEYS:
            if key not in feats[0]:
                continue
            if key == "labels" and not isinstance(feats[0]["labels"], list):
                out[key] = torch.tensor([f["labels"] for f in feats], dtype=torch.long)
                continue
            fill = {"input_ids": self.pad_id, "labels": IGNORE_INDEX}.get(key, 0)
            rows = [f[key] + [fill] * (longest - len(f[key])) for f in feats]
            out[key] = torch.tensor(rows, dtype=torch.long)
        return out

"""Packing several chat examples into one sequence, the collator, and the model inputs per batch.

Why packing: chat examples are short and uneven (Dolly open_qa: tens to a few hundred tokens), so
padded batches waste compute. `pack_features` puts whole examples into rows of at most
`max_seq_len` tokens (first-fit over examples sorted longest first; an example is never split).

Keeping packed examples independent (what we chose, and why it is right for Llama in
transformers 5.x):
  * position_ids restart at 0 for every example, so RoPE sees the same positions as unpacked;
  * the model gets `position_ids` and **no** attention mask. transformers' mask builder
    (`masking_utils.find_packed_sequence_indices`) then detects the restarts and builds a
    block-diagonal causal mask for eager/SDPA/flex attention (flash-attention uses the same
    position_ids for its varlen path), so no token attends across examples. We check this
    numerically in tests/chat/test_chat_packing.py: packed logits equal unpacked logits.
  * labels: the first token of every example is IGNORE_INDEX (template.py sets label 0 to -100),
    so the causal shift never asks the last token of one example to predict the first token of
    the next. No label crosses an example boundary.
  * padding after the last example gets its own restarted position_ids: it becomes one more
    "example" that only attends to itself, with all labels -100.
Batches keep an `attention_mask` of 1s on real tokens for token counting (the training loop's
tokens/s); `model_inputs` drops it when position_ids are present, because passing a 2-D mask
would switch the packed-sequence detection off.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sparseft.load.tokenize import IGNORE_INDEX


def pack_features(feats: Sequence[dict], max_seq_len: int) -> list[dict]:
    """Greedy first-fit-decreasing packing of tokenized examples into rows of <= max_seq_len.

    Each packed row has input_ids, labels, attention_mask (all 1), position_ids (restarting at 0
    per example) and `n_examples`. The order is deterministic (a function of the lengths only).
    """
    too_long = [i for i, f in enumerate(feats) if len(f["input_ids"]) > max_seq_len]
    if too_long:
        raise ValueError(f"{len(too_long)} example(s) are longer than max_seq_len={max_seq_len} "
                         f"(first: #{too_long[0]}); tokenize with the same max_seq_len before packing")
    order = sorted(range(len(feats)), key=lambda i: (-len(feats[i]["input_ids"]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(feats[i]["input_ids"])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_seq_len - n)
    rows = []
    for members in bins:
        members.sort()  # file order inside a row
        ids, labels, pos = [], [], []
        for i in members:
            f = feats[i]
            ids += f["input_ids"]
            lab = list(f["labels"])
            lab[0] = IGNORE_INDEX  # the boundary token: nothing before it in this example predicts it
            labels += lab
            pos += list(range(len(f["input_ids"])))
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids),
                     "position_ids": pos, "n_examples": len(members)})
    return rows


class ChatCollator:
    """Right-pads features to the longest in the batch; returns LongTensors.

    input_ids pad with `pad_id`, labels with -100, attention_mask with 0; position_ids (packed
    rows) pad with a fresh 0, 1, 2, ... run so the padding forms its own segment.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, feats: Sequence[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in feats)
        out = {
            "input_ids": [f["input_ids"] + [self.pad_id] * (longest - len(f["input_ids"])) for f in feats],
            "labels": [f["labels"] + [IGNORE_INDEX] * (longest - len(f["labels"])) for f in feats],
            "attention_mask": [f["attention_mask"] + [0] * (longest - len(f["attention_mask"])) for f in feats],
        }
        if "position_ids" in feats[0]:
            out["position_ids"] = [f["position_ids"] + list(range(longest - len(f["position_ids"]))) for f in feats]
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict:
    """Keyword arguments for the causal LM forward (labels excluded: the loss is ours).

    Packed batches ([B, T] position_ids present): input_ids + position_ids, no attention mask.
    Padded batches: input_ids + attention_mask (right padding, default positions 0..T-1).
    """
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def packing_stats(rows: Sequence[dict], max_seq_len: int) -> dict:
    """Rows, examples per row and the share of the row capacity that holds real tokens."""
    tokens = sum(len(r["input_ids"]) for r in rows)
    examples = sum(r.get("n_examples", 1) for r in rows)
    return {"packed_rows": len(rows), "examples_per_row": examples / max(1, len(rows)),
            "fill": tokens / max(1, len(rows) * max_seq_len)}

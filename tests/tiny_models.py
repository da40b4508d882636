"""Tiny random models and batches shared by the compress and experts tests (their conftests
import the fixtures from here)."""

from __future__ import annotations

import pytest
import torch

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def random_batches(vocab: int, n_batches: int, *, batch: int = 4, seq: int = 16, seed: int = 0,
                   pad_id: int = 0) -> list[dict]:
    """Random token batches with some right padding; labels = input ids (-100 on padding)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(7, vocab, (batch, seq), generator=gen)
        lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
        mask = (torch.arange(seq).unsqueeze(0) < lengths.unsqueeze(1)).long()
        ids = ids.masked_fill(mask == 0, pad_id)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


@pytest.fixture
def make_batches():
    """The `random_batches` function, for tests that need several independent batch sets."""
    return random_batches


@pytest.fixture
def bert_ner(tiny_bert_dir):
    from sparseft.load.model import load_model

    torch.manual_seed(0)
    return load_model(str(tiny_bert_dir), "ner", labels=NER_LABELS).eval()


@pytest.fixture
def llama_lm(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()

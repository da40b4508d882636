"""Fixtures for the expert tests: fresh tiny BERT / Llama models (d_ff 64) and random batches."""

from __future__ import annotations

import pytest
import torch

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def random_batches(vocab: int, n_batches: int, *, batch: int = 4, seq: int = 16, seed: int = 0) -> list[dict]:
    """Random token batches with some right padding (pad id 0); labels = input ids (-100 on padding)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(7, vocab, (batch, seq), generator=gen)
        lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
        mask = (torch.arange(seq).unsqueeze(0) < lengths.unsqueeze(1)).long()
        ids = ids.masked_fill(mask == 0, 0)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


@pytest.fixture
def bert_ner(tiny_bert_dir):
    from sparseft.load.model import load_model

    torch.manual_seed(0)
    return load_model(str(tiny_bert_dir), "ner", labels=NER_LABELS).eval()


@pytest.fixture
def llama_lm(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


@pytest.fixture
def batches_for():
    """batches_for(model, n=4, seed=0): random batches in the model's vocabulary."""
    def make(model, n: int = 4, seed: int = 0, **kw):
        return random_batches(model.config.vocab_size, n, seed=seed, **kw)
    return make


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.fixture
def logits():
    """logits(model, batch): the model's output logits on a batch, without gradients."""
    return _logits

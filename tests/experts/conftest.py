"""Fixtures for the expert tests: fresh tiny BERT / Llama models (d_ff 64) and random batches."""

from __future__ import annotations

import pytest
import torch

from tiny_models import NER_LABELS, bert_ner, llama_lm, random_batches  # noqa: E402,F401  shared fixtures


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

"""Fixtures for the pruning tests: fresh tiny models and calibration batches (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

from tiny_models import NER_LABELS, bert_ner, llama_lm, make_batches, random_batches  # noqa: E402,F401  shared fixtures


@pytest.fixture
def outlier_llama(llama_lm):
    """The tiny Llama with a few large input channels in every norm, as real LLMs have (the
    activation outliers that make Wanda/SparseGPT beat magnitude pruning)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, module in llama_lm.named_modules():
            if name.endswith("layernorm"):
                scale = torch.ones_like(module.weight)
                idx = torch.randperm(scale.numel(), generator=gen)[:4]
                scale[idx] = 8.0
                module.weight.mul_(scale)
    return llama_lm


@pytest.fixture
def lm_batches(llama_lm):
    return random_batches(llama_lm.config.vocab_size, 6, seed=0, pad_id=llama_lm.config.pad_token_id or 0)


@pytest.fixture
def ner_batches(bert_ner):
    batches = random_batches(bert_ner.config.vocab_size, 3, seed=2)
    gen = torch.Generator().manual_seed(3)
    for b in batches:  # token labels in the NER label range
        b["labels"] = torch.randint(0, len(NER_LABELS), b["input_ids"].shape, generator=gen).masked_fill(
            b["attention_mask"] == 0, -100)
    return batches

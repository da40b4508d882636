"""Fixtures for the pruning tests: fresh tiny models and calibration batches (CPU, seconds)."""

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

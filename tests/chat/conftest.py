"""Chat SFT fixtures: tokenizers with and without a chat template, a tiny Llama, toy chat files."""

from __future__ import annotations

from pathlib import Path

import pytest
from chat_fixtures import CHATML, write_jsonl


@pytest.fixture(scope="session")
def chatml_tokenizer(tiny_llama_dir):
    """The tiny word-piece tokenizer with ChatML special tokens and chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def plain_tokenizer(tiny_llama_dir):
    """The tiny tokenizer without a chat template (exercises the fallback template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="session")
def tiny_chat_model(tiny_llama_dir):
    """A tiny random Llama (vocab of the tiny tokenizer) in eval-ready fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)


@pytest.fixture
def toy_chat_files(tmp_path) -> tuple[Path, Path]:
    """Dolly-style train (16 records) and eval (4 records) files with a learnable pattern."""
    pairs = [("john visited", "paris city"), ("mary works", "london team"),
             ("smith lives", "berlin club"), ("google bank", "new york today")]
    train = [{"text": f"### Human: {q} ### Assistant: {a}"} for q, a in pairs * 4]
    evals = [{"text": f"### Human: {q} ### Assistant: {a}"} for q, a in pairs]
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "eval.jsonl", evals)

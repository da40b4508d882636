"""Shared fixtures: tiny randomly initialised models with a tiny word-piece tokenizer, saved as
ordinary save_pretrained folders so they go through the same loading code as real models.

Nothing here touches the network (HF_HUB_OFFLINE=1 is set before transformers is imported).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from more threads, and CI machines have 2 cores: one thread per test
# process keeps the suite predictable (and leaves a core for anything running beside it).
torch.set_num_threads(1)

WORDS = ("the a of in and to is was on for with at by from john mary smith paris london berlin acme corp "
         "bank google united nations german french english world cup said met visited works lives "
         "city team today yesterday new york club . , ' s").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    for w in WORDS:  # sub-word pieces so some words split into several tokens
        if len(w) > 4:
            vocab.setdefault("##" + w[3:], len(vocab))
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault("##" + ch, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=50))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT encoder folder (no task head)."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_bert")
    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide Llama-style decoder folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def toy_ner_files(tmp_path) -> tuple[Path, Path]:
    """Small BIO train/dev CoNLL files (tab separated) written for the test."""
    sents = [
        [("john", "B-PER"), ("smith", "I-PER"), ("visited", "O"), ("paris", "B-LOC"), (".", "O")],
        [("mary", "B-PER"), ("works", "O"), ("at", "O"), ("acme", "B-ORG"), ("corp", "I-ORG"), (".", "O")],
        [("the", "O"), ("german", "B-MISC"), ("team", "O"), ("was", "O"), ("in", "O"), ("london", "B-LOC")],
        [("google", "B-ORG"), ("is", "O"), ("in", "O"), ("new", "B-LOC"), ("york", "I-LOC"), (".", "O")],
    ]
    train, dev = tmp_path / "train.conll", tmp_path / "dev.conll"
    train.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sents * 6) + "\n")
    dev.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sents) + "\n")
    return train, dev


@pytest.fixture
def toy_cls_file(tmp_path) -> Path:
    rows = ["text,label"]
    for i in range(40):
        rows.append(f"john visited paris today,travel" if i % 2 else f"mary works at the bank,work")
    path = tmp_path / "cls.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} not available")
    return path

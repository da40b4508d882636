"""GGUF export of Llama-family decoders, read back by transformers' own GGUF loader."""

from __future__ import annotations

import pytest
import torch

gguf = pytest.importorskip("gguf")

from sparseft.export.gguf import export_gguf  # noqa: E402

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "john met mary in paris yesterday",
          "the bank of london said today", "hello world, hello sparse fine tuning"] * 4


def make_bpe_tokenizer():
    """A tiny byte-level BPE tokenizer (the tokenizer family of SmolLM2 / GPT-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")


@pytest.fixture(scope="module")
def bpe_tokenizer():
    return make_bpe_tokenizer()


def tiny_llama(vocab: int, *, tied: bool, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=tied, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms and peaked attention, so a wrong mapping or q/k layout shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(12.0)
    return model


def _reload(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("tied", [True, False])
def test_f32_round_trip_is_exact(tmp_path, bpe_tokenizer, tied):
    model = tiny_llama(len(bpe_tokenizer), tied=tied)
    path = tmp_path / "m-f32.gguf"
    export_gguf(model, path, tokenizer=bpe_tokenizer, qtype="f32")
    ids = torch.randint(3, len(bpe_tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    assert (_logits(model, ids) - _logits(_reload(path), ids)).abs().max() < 1e-5


@pytest.mark.parametrize("tied", [True, False])
def test_f16_round_trip_matches_logits(tmp_path, bpe_tokenizer, tied):
    model = tiny_llama(len(bpe_tokenizer), tied=tied)
    path = tmp_path / "m-f16.gguf"
    stats = export_gguf(model, path, tokenizer=bpe_tokenizer, qtype="f16")
    assert stats["tensor_types"]["F16"] > 0 and stats["bytes"] == path.stat().st_size
    back = _reload(path)
    assert back.config.tie_word_embeddings == tied
    ids = torch.randint(3, len(bpe_tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    a, b = _logits(model, ids), _logits(back, ids)
    assert (a - b).abs().max() < 5e-3, (a - b).abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.95


def test_q8_0_and_q4_0_are_smaller_and_close(tmp_path, bpe_tokenizer):
    model = tiny_llama(len(bpe_tokenizer), tied=True)
    ids = torch.randint(3, len(bpe_tokenizer), (2, 12), generator=torch.Generator().manual_seed(1))
    ref = _logits(model, ids)
    sizes = {}
    for qtype, tol in (("f16", 5e-3), ("q8_0", 0.1), ("q4_0", 0.6)):
        path = tmp_path / f"m-{qtype}.gguf"
        stats = export_gguf(model, path, tokenizer=bpe_tokenizer, qtype=qtype)
        sizes[qtype] = stats["bytes"]
        err = (_logits(_reload(path), ids) - ref).abs().max()
        assert err < tol, (qtype, float(err))
    assert sizes["q8_0"] < sizes["f16"] and sizes["q4_0"] < sizes["q8_0"]


def test_tokenizer_survives(tmp_path, bpe_tokenizer):
    from transformers import AutoTokenizer

    path = tmp_path / "m.gguf"
    export_gguf(tiny_llama(len(bpe_tokenizer), tied=True), path, tokenizer=bpe_tokenizer, qtype="f32")
    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ("john met mary in the park", "Hello, world!  x"):
        assert back(text)["input_ids"] == bpe_tokenizer(text)["input_ids"]
    assert (back.eos_token, back.bos_token) == (bpe_tokenizer.eos_token, bpe_tokenizer.bos_token)


def test_refuses_unsupported(tmp_path, bpe_tokenizer):
    model = tiny_llama(len(bpe_tokenizer), tied=True)
    with pytest.raises(ValueError, match="qtype"):
        export_gguf(model, tmp_path / "m.gguf", tokenizer=bpe_tokenizer, qtype="q3_k")
    with pytest.raises(ValueError, match=r"\.gguf"):
        export_gguf(model, tmp_path / "m.bin", tokenizer=bpe_tokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        export_gguf(model, tmp_path / "m.gguf")
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64))
    with pytest.raises(ValueError, match="model types"):
        export_gguf(bert, tmp_path / "b.gguf", tokenizer=bpe_tokenizer)
    assert not list(tmp_path.glob("*.gguf"))


def test_cli_export_gguf_reads_back(tmp_path, bpe_tokenizer):
    import json

    from sparseft.cli.main import main

    src = tmp_path / "llama"
    tiny_llama(len(bpe_tokenizer), tied=True).save_pretrained(src)
    bpe_tokenizer.save_pretrained(src)
    out, report = tmp_path / "gguf", tmp_path / "gguf.json"
    assert main(["export", str(src), "--format", "gguf", "--gguf-type", "q8_0", "--output", str(out),
                 "--json", str(report)]) == 0
    stats = json.loads(report.read_text())
    assert (out / "model-q8_0.gguf").is_file() and stats["tensor_types"]["Q8_0"] > 0
    assert stats["verify"]["argmax_agreement"] > 0.9 and stats["verify"]["max_abs_logit_diff"] < 0.1
    assert main(["export", str(src), "--format", "gguf", "--output", str(src)]) == 2  # never over the input

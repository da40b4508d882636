"""Structured pruning: units are physically removed, outputs stay finite, the saved folder reloads
with plain transformers and gives the same outputs, and unimportant units are the ones removed."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from sparseft.compress.prune import StructuredPruneConfig, prune_
from sparseft.eval.cost import count_parameters


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_bert_ffn_and_layer_drop_reload(bert_ner, ner_batches, tmp_path):
    before = count_parameters(bert_ner)["params"]
    prune_(bert_ner, StructuredPruneConfig(ffn_sparsity=0.75, drop_layers=[1]))
    assert bert_ner.config.intermediate_size == 16 and bert_ner.config.num_hidden_layers == 1
    assert bert_ner.bert.encoder.layer[0].intermediate.dense.weight.shape == (16, 32)
    assert bert_ner.bert.encoder.layer[0].output.dense.weight.shape == (32, 16)
    assert count_parameters(bert_ner)["params"] < before
    out = _logits(bert_ner, ner_batches[0])
    assert torch.isfinite(out).all()
    bert_ner.save_pretrained(tmp_path)
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()  # plain transformers
    assert torch.allclose(_logits(reloaded, ner_batches[0]), out, atol=1e-5)


def test_bert_heads_are_a_clear_error(bert_ner):
    with pytest.raises(ValueError, match="BERT-family"):
        prune_(bert_ner, StructuredPruneConfig(ffn_sparsity=0.0, head_sparsity=0.5))


@pytest.mark.parametrize("importance", ["weight", "activation"])
def test_llama_heads_ffn_layers_reload(llama_lm, lm_batches, tmp_path, importance):
    cfg = StructuredPruneConfig(ffn_sparsity=0.5, head_sparsity=0.5, drop_layers=[0], importance=importance)
    prune_(llama_lm, cfg, batches=lm_batches)
    c = llama_lm.config
    # 4 query heads in 2 KV groups -> 1 query head per group; KV heads and head_dim unchanged
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (2, 2, 8)
    assert (c.intermediate_size, c.num_hidden_layers) == (32, 1)
    attn = llama_lm.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (16, 32) and attn.o_proj.weight.shape == (32, 16)
    assert attn.layer_idx == 0
    out = _logits(llama_lm, lm_batches[0])
    assert torch.isfinite(out).all()
    llama_lm.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(_logits(reloaded, lm_batches[0]), out, atol=1e-5)
    # generation with a KV cache still works on the smaller model
    gen = reloaded.generate(lm_batches[0]["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, 7)


def test_llama_mha_removes_whole_heads(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=4, intermediate_size=64)).eval()
    prune_(model, StructuredPruneConfig(ffn_sparsity=0.0, head_sparsity=0.5))
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 2)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (16, 32)
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 50, (2, 6))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-5)


def test_dead_units_are_removed_first(bert_ner, ner_batches):
    """FFN neurons whose output weights are zero contribute nothing: removing exactly those keeps
    the outputs unchanged, for both importance measures."""
    for importance in ("weight", "activation"):
        model = copy.deepcopy(bert_ner)
        with torch.no_grad():
            for layer in model.bert.encoder.layer:
                layer.output.dense.weight[:, 1::2] = 0.0          # kill the odd neurons
        ref = _logits(model, ner_batches[0])
        prune_(model, StructuredPruneConfig(ffn_sparsity=0.5, importance=importance), batches=ner_batches)
        assert model.config.intermediate_size == 32
        assert torch.allclose(_logits(model, ner_batches[0]), ref, atol=1e-5), importance


def test_validation():
    with pytest.raises(ValueError, match="nothing to prune"):
        StructuredPruneConfig(ffn_sparsity=0.0)
    with pytest.raises(ValueError, match="importance"):
        StructuredPruneConfig(importance="taylor")
    with pytest.raises(ValueError, match="drop_layers"):
        StructuredPruneConfig(drop_layers=[1, 1])
    assert StructuredPruneConfig(importance="activation").needs_batches()
    assert StructuredPruneConfig(multiple_of=8, ffn_sparsity=0.3).multiple_of == 8


def test_multiple_of_rounds_kept_width(bert_ner):
    prune_(bert_ner, StructuredPruneConfig(ffn_sparsity=0.7, multiple_of=8))
    assert bert_ner.config.intermediate_size == 24     # 64 - 45 = 19 -> 24

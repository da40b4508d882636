"""Sparse attention on real transformers models (tiny random BERT and Llama, fp32): registered through
AttentionInterface / AttentionMaskInterface, equal to the dense-masked reference in outputs and input
gradients, equal to the unmodified SDPA model when the window covers the input, saved and restored
with the model, dense under a plain transformers load, and consistent under cached generation."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from transformers import BertConfig, BertForTokenClassification, LlamaConfig, LlamaForCausalLM

from sparseft.attention.apply import attention_config, densify_attention_, sparsify_attention_
from sparseft.attention.config import SparseAttentionConfig
from sparseft.attention.interface import ATTN_NAME, CONFIG_KEY

LEN = 40


def _bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128, id2label={0: "O", 1: "B-PER", 2: "I-PER"},
                     label2id={"O": 0, "B-PER": 1, "I-PER": 2}, attention_probs_dropout_prob=0.0)
    return BertForTokenClassification(cfg).eval()


def _llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


MODELS = {"bert": _bert, "llama": _llama}


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (2, LEN), generator=gen)
    mask = torch.ones(2, LEN, dtype=torch.long)
    mask[1, 31:] = 0          # right padding on the second row
    return ids, mask


def _run(model, ids, mask, *, grad=False):
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(grad)
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits
    if not grad:
        return logits, None
    weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    (logits * weight * mask.unsqueeze(-1)).sum().backward()
    return logits, embeds.grad


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_window_covering_the_input_equals_the_sdpa_model(arch):
    dense = MODELS[arch]()
    sparse = copy.deepcopy(dense)
    sparsify_attention_(sparse, SparseAttentionConfig(window=LEN))
    assert sparse.config._attn_implementation == ATTN_NAME
    ids, mask = _batch()
    want, _ = _run(dense, ids, mask)
    got, _ = _run(sparse, ids, mask)
    keep = mask.bool()
    assert (got - want)[keep].abs().max() <= 1e-5
    sparsify_attention_(sparse, SparseAttentionConfig(window=4))       # a real window changes the model
    assert (_run(sparse, ids, mask)[0] - want)[keep].abs().max() > 1e-3


PATTERNS = {
    "bert": [dict(window=3, global_tokens=1), dict(window="sqrt", min_window=2, dilation=2),
             dict(window=3, stride=9, random_blocks=1, random_block_size=8)],
    "llama": [dict(window=4, sinks=2), dict(window=3, stride="sqrt"), dict(window=3, stride=8, stride_mode="fixed",
                                                                         random_blocks=2, random_block_size=8)],
}


@pytest.mark.parametrize("arch,index", [(a, i) for a in sorted(PATTERNS) for i in range(len(PATTERNS[a]))])
def test_model_matches_dense_masked_reference_with_input_gradients(arch, index):
    base = MODELS[arch]()
    ids, mask = _batch()
    outs = []
    for backend in ("blocked", "dense_mask"):
        model = copy.deepcopy(base)
        sparsify_attention_(model, SparseAttentionConfig(**PATTERNS[arch][index], backend=backend))
        outs.append(_run(model, ids, mask, grad=True))
    (a, ga), (b, gb) = outs
    keep = mask.bool()
    assert (a - b)[keep].abs().max() <= 1e-5
    assert (ga - gb)[keep].abs().max() <= 1e-5


def test_decoder_never_looks_ahead():
    model = _llama()
    sparsify_attention_(model, SparseAttentionConfig(window=5, sinks=2, stride=7, random_blocks=1,
                                                     random_block_size=8))
    ids, _ = _batch()
    other = ids.clone()
    other[:, 25:] = (other[:, 25:] + 7) % 57 + 3
    with torch.no_grad():
        a, b = model(ids).logits, model(other).logits
    assert torch.equal(a[:, :25], b[:, :25])
    assert not torch.allclose(a[:, 25:], b[:, 25:])


@pytest.mark.parametrize("recompute", [False, True])
def test_training_step_runs_with_dropout_and_gradients_reach_every_weight(recompute):
    model = _bert()
    for module in model.modules():       # attention-probability dropout on (the fixture builds it at 0)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    sparsify_attention_(model, SparseAttentionConfig(window=8, global_tokens=1, recompute=recompute))
    model.train()
    ids, mask = _batch()
    out = model(input_ids=ids, attention_mask=mask, labels=torch.zeros_like(ids))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if "pooler" not in n)


def test_cached_generation_equals_uncached_windowed_forward():
    model = _llama()
    sparsify_attention_(model, SparseAttentionConfig(window=6, sinks=2))
    ids = _batch()[0][:, :12]
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        full = model(gen.sequences).logits
    steps = torch.stack(gen.scores, 1)                                        # [B, 10, V]
    assert (steps - full[:, 11:-1]).abs().max() <= 1e-4
    assert torch.equal(full[:, 11:-1].argmax(-1), gen.sequences[:, 12:])


def test_dispatch_store_and_undo():
    model = _bert()
    cfg = SparseAttentionConfig(window=8, global_tokens=1)
    sparsify_attention_(model, cfg)
    assert attention_config(model) == cfg
    assert json.loads(model.config.to_json_string())[CONFIG_KEY]["_data"]["window"] == 8
    with pytest.raises(TypeError, match="not an attention method"):
        from sparseft.compress.prune.magnitude import MagnitudePruneConfig

        sparsify_attention_(model, MagnitudePruneConfig(sparsity=0.5))
    densify_attention_(model)
    assert model.config._attn_implementation == "sdpa" and attention_config(model) is None


def test_missing_pattern_and_4d_masks_are_refused():
    model = _llama()
    sparsify_attention_(model, SparseAttentionConfig(window=4))
    delattr(model.config, CONFIG_KEY)
    with pytest.raises(ValueError, match=CONFIG_KEY):
        model(torch.ones(1, 8, dtype=torch.long))


PLAIN_LOAD = r"""
import sys, warnings, logging, torch, transformers
assert "sparseft" not in sys.modules
transformers.logging.set_verbosity_warning()
transformers.logging.disable_progress_bar()
path, auto = sys.argv[1], sys.argv[2]
with warnings.catch_warnings():
    warnings.simplefilter("error")
    model, info = getattr(transformers, auto).from_pretrained(path, output_loading_info=True)
assert "sparseft" not in sys.modules
assert not any(info.values()), info   # no missing / unexpected / mismatched weights
model.eval()
print(model.config._attn_implementation)
ids = torch.load(sys.argv[3])
with torch.no_grad():
    torch.save(model(**ids).logits, sys.argv[4])
"""


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_save_load_restores_and_plain_transformers_loads_dense(arch, tmp_path):
    import sparseft

    dense = MODELS[arch]()
    model = copy.deepcopy(dense)
    sparsify_attention_(model, SparseAttentionConfig(window=4, sinks=1, global_tokens=int(arch == "bert")))
    ids, mask = _batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        want_dense = dense(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())[CONFIG_KEY]["_data"]["window"] == 4

    back = sparseft.load(str(tmp_path / "m"), task="lm" if arch == "llama" else "ner")
    assert back.config._attn_implementation == ATTN_NAME
    with torch.no_grad():
        assert (back(input_ids=ids, attention_mask=mask).logits - want).abs().max() <= 1e-6

    torch.save({"input_ids": ids, "attention_mask": mask}, tmp_path / "in.pt")
    auto = "AutoModelForCausalLM" if arch == "llama" else "AutoModelForTokenClassification"
    run = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(tmp_path / "m"), auto, str(tmp_path / "in.pt"),
                          str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "sdpa"
    assert "weight" not in run.stderr.lower(), run.stderr   # transformers says nothing about the weights
    plain = torch.load(tmp_path / "out.pt")
    assert (plain - want_dense)[mask.bool()].abs().max() <= 1e-5


@pytest.mark.parametrize("pattern", [dict(window=6, sinks=2), dict(window=4, dilation=2),
                                     dict(window=5, global_tokens=1, sinks=3)])
def test_rolling_windowed_cache_generation_equals_uncached_forward_in_bounded_memory(pattern):
    from sparseft.attention.cache import windowed_cache

    model = _llama()
    cfg = SparseAttentionConfig(**pattern)
    sparsify_attention_(model, cfg)
    ids = _batch()[0][:, :12]
    cache = windowed_cache(model)
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, max_new_tokens=15,
                             do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        full = model(gen.sequences).logits
    assert (torch.stack(gen.scores, 1) - full[:, 11:-1]).abs().max() <= 1e-4
    kept = max(cfg.sinks, cfg.global_tokens) + (cfg.window_for(1) - 1) * cfg.dilation
    assert all(layer.keys.shape[2] == kept for layer in cache.layers)       # O(window) per layer
    assert cache.get_seq_length() == 12 + 15 - 1


def test_windowed_cache_refuses_patterns_that_cannot_roll():
    from sparseft.attention.cache import windowed_cache

    model = _llama()
    sparsify_attention_(model, SparseAttentionConfig(window=4, stride=8))
    with pytest.raises(ValueError, match="stride"):
        windowed_cache(model)
    sparsify_attention_(model, SparseAttentionConfig(window="sqrt"))
    with pytest.raises(ValueError, match="max_length"):
        windowed_cache(model)
    assert windowed_cache(model, max_length=1024).layers[0].recent == 31


def test_recipe_stage_applies_the_pattern():
    from types import SimpleNamespace

    from sparseft.config.recipe import Recipe, Stage
    from sparseft.methods import build_stage_config
    from sparseft.report.card import Report

    recipe = Recipe.from_dict({"model": "x", "data": {"task": "lm"}, "output_dir": "unused", "seed": 7,
                               "stages": [{"name": "attn", "method": "sparse_attention", "window": 8, "sinks": 2}]})
    method, cfg = build_stage_config(recipe.stages[0], recipe)
    ctx = SimpleNamespace(model=_llama(), report=Report(title="t"))
    method.apply_fn(ctx, cfg, "attn")
    assert attention_config(ctx.model) == SparseAttentionConfig(window=8, sinks=2, seed=7)
    assert ctx.report.sections["attn"]["attn_implementation"] == ATTN_NAME
    with pytest.raises(ValueError, match="window"):
        build_stage_config(Stage(name="a", method="sparse_attention", params={"window": "log"}), recipe)


def test_packed_sequences_are_refused_not_leaked():
    model = _llama()
    sparsify_attention_(model, SparseAttentionConfig(window=4))
    ids = _batch()[0][:1, :12]
    positions = torch.cat([torch.arange(6), torch.arange(6)]).unsqueeze(0)
    with pytest.raises(ValueError, match="packed sequences"):
        model(ids, position_ids=positions)
    model(ids, position_ids=torch.arange(12).unsqueeze(0))   # ordinary positions are fine



def test_left_padding_with_sinks_warns():
    model = _llama()
    sparsify_attention_(model, SparseAttentionConfig(window=4, sinks=2))
    ids, mask = _batch()
    mask = mask.flip(1)                    # left padding on the second row
    with pytest.warns(RuntimeWarning, match="pad on the right"):
        model(ids, attention_mask=mask)

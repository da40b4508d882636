"""Sequential (GPTQ "true sequential") calibration inside each block: the groups follow the call
order, and a later group is calibrated on what the already pruned earlier groups compute."""

from __future__ import annotations

import copy

import pytest
import torch

from sparseft.compress.prune import SparseGPTConfig, WandaConfig, prune_, sparsity_report
from sparseft.compress.prune.common import n_pruned, prunable_weights
from sparseft.compress.prune.layerwise import capture_block_inputs, find_blocks, input_groups
from sparseft.compress.prune.sparsegpt import sparsegpt_weight


def _block_groups(model, batches) -> list[list[str]]:
    _, blocks = find_blocks(model)
    item = capture_block_inputs(model, blocks, batches[:1])[0]
    layers = [(n, m) for n, m in blocks[0].named_modules() if isinstance(m, torch.nn.Linear)]
    return [[name for name, _ in group] for group in input_groups(blocks[0], layers, item)]


def test_groups_follow_the_call_order(llama_lm, lm_batches, bert_ner, ner_batches):
    assert _block_groups(llama_lm, lm_batches) == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    assert _block_groups(bert_ner, ner_batches) == [
        ["attention.self.query", "attention.self.key", "attention.self.value"], ["attention.output.dense"],
        ["intermediate.dense"], ["output.dense"]]


@torch.no_grad()
def test_later_group_is_calibrated_on_the_pruned_earlier_ones(llama_lm, lm_batches):
    dense = llama_lm
    seq = copy.deepcopy(dense)
    prune_(seq, SparseGPTConfig(sparsity=0.5, sequential=True), batches=lm_batches)
    plain = copy.deepcopy(dense)
    prune_(plain, SparseGPTConfig(sparsity=0.5), batches=lm_batches)
    b_seq, b_plain = seq.model.layers[0], plain.model.layers[0]
    # the first group sees the same (dense) inputs either way
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(getattr(b_seq.self_attn, name).weight, getattr(b_plain.self_attn, name).weight)
    # o_proj: SparseGPT on the inputs of a model whose block-0 q/k/v are the pruned ones
    probe = copy.deepcopy(dense)
    for name in ("q_proj", "k_proj", "v_proj"):
        getattr(probe.model.layers[0].self_attn, name).weight.copy_(getattr(b_seq.self_attn, name).weight)
    xtx, tokens, mask = 0.0, 0, [None]

    def hook(module, inp, out):
        nonlocal xtx, tokens
        x = inp[0][mask[0]].float()
        xtx = xtx + x.T @ x
        tokens += x.shape[0]

    handle = probe.model.layers[0].self_attn.o_proj.register_forward_hook(hook)
    for b in lm_batches:
        mask[0] = b["attention_mask"].bool()
        probe(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    handle.remove()
    expected = sparsegpt_weight(dense.model.layers[0].self_attn.o_proj.weight, 2.0 * xtx / tokens,
                                sparsity=0.5, nm=None)
    got = b_seq.self_attn.o_proj.weight
    assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())
    assert not torch.allclose(got, b_plain.self_attn.o_proj.weight, atol=1e-4)


@pytest.mark.parametrize("cfg", [SparseGPTConfig(sparsity=0.5, sequential=True),
                                 SparseGPTConfig(pattern="2:4", sequential=True),
                                 WandaConfig(sparsity=0.5, sequential=True)], ids=["sparsegpt", "2:4", "wanda"])
def test_sequential_keeps_the_budget(llama_lm, lm_batches, cfg):
    prune_(llama_lm, cfg, batches=lm_batches)
    for _, p in prunable_weights(llama_lm, ["Linear"], ["lm_head"]):
        if cfg.pattern == "2:4":
            assert ((p != 0).reshape(p.shape[0], -1, 4).sum(-1) == 2).all()
        elif isinstance(cfg, WandaConfig):
            assert ((p == 0).sum(1) == n_pruned(p.shape[1], 0.5)).all()
        else:
            assert int((p == 0).sum()) == n_pruned(p.numel(), 0.5)


def test_sequential_on_bert_and_json_round_trip(bert_ner, ner_batches):
    cfg = SparseGPTConfig(sparsity=0.5, sequential=True)
    assert SparseGPTConfig.from_dict(cfg.to_dict()) == cfg
    prune_(bert_ner, cfg, batches=ner_batches)
    assert abs(sparsity_report(bert_ner)["sparsity"] - 0.5) < 1e-6

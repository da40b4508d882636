"""Wanda and SparseGPT: exact sparsity (unstructured and N:M), and on a tiny Llama with outlier
activation channels both reconstruct the dense layers better than magnitude pruning."""

from __future__ import annotations

import copy

import pytest
import torch

from sparseft.compress.prune import (MagnitudePruneConfig, NMPruneConfig, SparseGPTConfig, WandaConfig,
                                     prune_, sparsity_report)
from sparseft.compress.prune.common import n_pruned, prunable_weights
from sparseft.compress.prune.sparsegpt import _block_budgets

IGNORE = ["lm_head"]


@pytest.mark.parametrize("cfg", [WandaConfig(sparsity=0.5), WandaConfig(sparsity=0.7, allocation="per_tensor"),
                                 SparseGPTConfig(sparsity=0.6), SparseGPTConfig(sparsity=0.5, block_size=16)],
                         ids=["wanda-row", "wanda-tensor", "sparsegpt", "sparsegpt-b16"])
def test_unstructured_exact(llama_lm, lm_batches, cfg):
    prune_(llama_lm, cfg, batches=lm_batches)
    for _, p in prunable_weights(llama_lm, ["Linear"], IGNORE):
        if isinstance(cfg, WandaConfig) and cfg.allocation == "per_row":
            assert ((p == 0).sum(1) == n_pruned(p.shape[1], cfg.sparsity)).all()
        else:
            assert int((p == 0).sum()) == n_pruned(p.numel(), cfg.sparsity)


@pytest.mark.parametrize("cls", [WandaConfig, SparseGPTConfig])
@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_holds_in_every_group(llama_lm, lm_batches, cls, pattern, n, m):
    prune_(llama_lm, cls(pattern=pattern), batches=lm_batches)
    for _, p in prunable_weights(llama_lm, ["Linear"], IGNORE):
        groups = (p != 0).reshape(p.shape[0], -1, m).sum(-1)
        assert (groups == n).all()


@torch.no_grad()
def _layer_errors(dense, pruned, batches) -> float:
    """Sum over targeted Linear layers of ||W X - W' X||^2 / ||W X||^2, X = the dense model's inputs."""
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: inputs.setdefault(n, []).append(inp[0]))
             for n, m in dense.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    with torch.no_grad():
        for b in batches:
            dense(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    for h in hooks:
        h.remove()
    total = 0.0
    pruned_mods = dict(pruned.named_modules())
    for name, xs in inputs.items():
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs])
        ref = x @ dict(dense.named_modules())[name].weight.T
        out = x @ pruned_mods[name].weight.T
        total += float(((ref - out) ** 2).sum() / (ref ** 2).sum())
    return total


def test_wanda_and_sparsegpt_beat_magnitude(outlier_llama, make_batches):
    vocab = outlier_llama.config.vocab_size
    calib = make_batches(vocab, 6, seed=0)
    held_out = make_batches(vocab, 4, seed=9)   # errors measured on other data than calibration
    errs = {}
    for name, cfg in [("magnitude", MagnitudePruneConfig(sparsity=0.5, allocation="per_row")),
                      ("wanda", WandaConfig(sparsity=0.5)), ("sparsegpt", SparseGPTConfig(sparsity=0.5)),
                      ("magnitude 2:4", NMPruneConfig()), ("wanda 2:4", WandaConfig(pattern="2:4")),
                      ("sparsegpt 2:4", SparseGPTConfig(pattern="2:4"))]:
        model = copy.deepcopy(outlier_llama)
        prune_(model, cfg, batches=calib)
        errs[name] = _layer_errors(outlier_llama, model, held_out)
    for pattern in ("", " 2:4"):
        mag = errs["magnitude" + pattern]
        assert errs["wanda" + pattern] < 0.8 * mag, errs
        assert errs["sparsegpt" + pattern] < 0.8 * mag, errs
        assert errs["sparsegpt" + pattern] < errs["wanda" + pattern], errs


def test_layerwise_works_on_bert_and_rejects_layers_outside_blocks(bert_ner, ner_batches):
    prune_(bert_ner, WandaConfig(sparsity=0.5), batches=ner_batches)
    assert abs(sparsity_report(bert_ner)["sparsity"] - 0.5) < 1e-6
    with pytest.raises(ValueError, match="ignore"):
        prune_(bert_ner, WandaConfig(sparsity=0.5, ignore=[]), batches=ner_batches)


def test_outputs_stay_finite(llama_lm, lm_batches):
    prune_(llama_lm, SparseGPTConfig(sparsity=0.7), batches=lm_batches)
    out = llama_lm(input_ids=lm_batches[0]["input_ids"], attention_mask=lm_batches[0]["attention_mask"]).logits
    assert torch.isfinite(out).all()


def test_config_validation_and_budgets():
    with pytest.raises(ValueError, match="fixes sparsity"):
        WandaConfig(sparsity=0.7, pattern="2:4")
    with pytest.raises(ValueError, match="pattern"):
        SparseGPTConfig(pattern="2-4")
    with pytest.raises(ValueError, match="block_size"):
        SparseGPTConfig(pattern="4:8", block_size=12)
    with pytest.raises(ValueError, match="calibration"):
        prune_(torch.nn.Linear(2, 2), WandaConfig())
    budgets = _block_budgets(rows=3, cols=10, block=4, sparsity=0.5)
    assert sum(budgets) == 15 and len(budgets) == 3


def _reference_module():
    from bench_scripts import load_bench

    return load_bench("bench_prune_reference")


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_and_wanda_equal_a_plain_float64_reference(nm):
    """The blocked, Cholesky-based SparseGPT = the OBS update written one column at a time."""
    from sparseft.compress.prune.common import nm_mask, select_masks
    from sparseft.compress.prune.sparsegpt import sparsegpt_weight
    from sparseft.compress.prune.wanda import InputNorms, wanda_scores

    ref = _reference_module()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 48, generator=g) @ torch.randn(48, 48, generator=g)     # correlated inputs
    x[:, 3] *= 20.0                                                              # one outlier feature
    x[:, 7] = 0.0                                                                # one dead input
    W = torch.randn(24, 48, generator=g)
    xtx = (x.T @ x).double() / x.shape[0]
    ours = sparsegpt_weight(W, 2.0 * xtx.float(), sparsity=0.5, nm=nm, block_size=16)
    plain = ref.reference_sparsegpt(W, 2.0 * xtx, sparsity=0.5, nm=nm, block_size=16)
    assert torch.equal(ours == 0, plain == 0)
    assert (ours.double() - plain).abs().max() < 1e-4 * W.abs().max()
    assert ref.relative_error(W, ours, xtx) == pytest.approx(ref.relative_error(W, plain, xtx), rel=1e-4)

    norms = InputNorms(torch.nn.Linear(48, 1, bias=False))
    norms.add(x)
    scores = wanda_scores(W, norms)
    mask = nm_mask(scores, *nm, name="w") if nm else select_masks({"w": scores}, 0.5, "per_row")["w"]
    assert torch.equal((W * mask) == 0, ref.reference_wanda(W, xtx, sparsity=0.5, nm=nm) == 0)
    magnitude = W * select_masks({"w": W.abs()}, 0.5, "per_row")["w"]
    assert ref.relative_error(W, plain, xtx) < ref.relative_error(W, W * mask, xtx) < ref.relative_error(W, magnitude, xtx)

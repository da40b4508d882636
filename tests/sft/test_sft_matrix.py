"""Every mask method trained end to end on the tiny BERT (a few steps each), then the shared
checks: exact budget, only masked entries change (bit-exact elsewhere), the dense head is
trained and stored, save -> load -> apply reproduces the trained outputs, apply -> revert gives
W0 back exactly, and the model comes back as plain modules."""

from __future__ import annotations

import pytest
import torch

from sft_toys import (FAST_OPTIONS, MASK_METHODS, collate, logits, ner_data, ner_model, train_cfg, weights,
                      write_ner_files)
from sparseft.export.sparse_diff import apply_diff_, load_diff, revert_diff_, save_diff
from sparseft.masks.select import mask_config
from sparseft.sft import sparse_finetune
from sparseft.sft.layer import SparseDelta

DENSITY = 0.05


@pytest.fixture(scope="module")
def data(tiny_tokenizer, tmp_path_factory):
    train, dev = write_ner_files(tmp_path_factory.mktemp("ner"))
    return ner_data(tiny_tokenizer, train, dev)


@pytest.fixture(scope="module")
def runs(data, tiny_bert_dir, tiny_tokenizer, tmp_path_factory):
    """method -> (W0 state, trained model, diff); trained once per module."""
    out = {}
    for method in MASK_METHODS:
        model = ner_model(tiny_bert_dir, data.labels)
        w0 = weights(model)
        cfg = mask_config(method, density=DENSITY, **FAST_OPTIONS[method])
        _, diff = sparse_finetune(model, data.train, train_cfg(tmp_path_factory.mktemp(method)), cfg,
                                  collate_fn=collate(tiny_tokenizer), base_id="tiny-bert")
        out[method] = (w0, model, diff)
    return out


@pytest.mark.parametrize("method", MASK_METHODS)
def test_exact_budget_and_manifest(method, runs):
    w0, _, diff = runs[method]
    targeted = sum(w0[n].numel() for n in diff.manifest["fingerprint_tensors"])
    assert diff.count == round(DENSITY * targeted)
    assert diff.manifest["mask"] == method and diff.manifest["base_model"] == "tiny-bert"
    assert diff.manifest["task"] == "ner" and diff.manifest["labels"]
    for name, idx in diff.indices.items():
        assert idx.dtype == torch.int64 and torch.equal(idx, torch.unique(idx))  # sorted, unique


@pytest.mark.parametrize("method", MASK_METHODS)
def test_only_masked_entries_change(method, runs):
    w0, model, diff = runs[method]
    w1 = weights(model)
    for name in diff.manifest["fingerprint_tensors"]:
        changed = torch.nonzero((w0[name] != w1[name]).reshape(-1)).reshape(-1)
        allowed = diff.indices.get(name, torch.empty(0, dtype=torch.long))
        assert torch.isin(changed, allowed).all(), f"{name}: entries outside the mask changed"
        untouched = torch.ones(w0[name].numel(), dtype=torch.bool)
        untouched[allowed] = False
        assert torch.equal(w0[name].reshape(-1)[untouched], w1[name].reshape(-1)[untouched])
    frozen = [n for n in w0 if n not in diff.indices and n not in diff.dense]
    assert all(torch.equal(w0[n], w1[n]) for n in frozen), "biases / norms / embeddings must stay frozen"
    assert sum(int((w0[n] != w1[n]).sum()) for n in diff.indices) > 0.5 * diff.count
    assert not torch.equal(w0["classifier.weight"], w1["classifier.weight"])  # the new head trains
    assert torch.equal(diff.dense["classifier.weight"], w1["classifier.weight"])


@pytest.mark.parametrize("method", MASK_METHODS)
def test_model_is_plain_again(method, runs):
    _, model, _ = runs[method]
    assert not any(isinstance(m, SparseDelta) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert type(model.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear


@pytest.mark.parametrize("method", MASK_METHODS)
def test_save_load_apply_reproduces_and_revert_restores(method, runs, data, tiny_bert_dir, tiny_tokenizer,
                                                        tmp_path):
    w0, model, diff = runs[method]
    save_diff(diff, tmp_path / "diff")
    loaded = load_diff(tmp_path / "diff")
    base = ner_model(tiny_bert_dir, data.labels, seed=123)  # another random head: the diff brings its own
    apply_diff_(base, loaded)
    assert torch.equal(logits(base, data, tiny_tokenizer), logits(model, data, tiny_tokenizer))
    assert all(torch.equal(v, weights(model)[k]) for k, v in weights(base).items())
    revert_diff_(base, loaded)
    for name in diff.manifest["fingerprint_tensors"]:
        assert torch.equal(base.state_dict()[name], w0[name])


def test_regrow_moved_the_mask_and_kept_the_budget(runs):
    _, _, diff = runs["regrow"]
    history = diff.manifest["regrow_history"]
    assert history and history[0]["step"] == 2 and history[0]["replaced"] > 0
    assert all(v.abs().sum() > 0 for v in diff.values.values())

"""Sparse fine-tuning as a peft method: get_peft_model, save/load, merge_and_unload, unload."""

from __future__ import annotations

import json

import pytest
import torch

peft = pytest.importorskip("peft")

from peft import PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from sparseft.integrations import SparseFTConfig, select_sparseft_masks_, sparseft_layers  # noqa: E402
from sparseft.masks.magnitude import MagnitudeMaskConfig  # noqa: E402
from sparseft.masks.select import select_masks  # noqa: E402
from sparseft.sft.layer import merge_sparse_, sparsify_  # noqa: E402
from sft_toys import ner_model  # noqa: E402

LABELS = ["O", "B-PER", "I-PER"]


def base(tiny_bert_dir):
    return ner_model(tiny_bert_dir, LABELS, seed=0)


def batch(n=4, seq=8, vocab=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, vocab, (n, seq), generator=g),
            "attention_mask": torch.ones(n, seq, dtype=torch.long),
            "labels": torch.randint(0, len(LABELS), (n, seq), generator=g)}


def train_steps(model, steps=3, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def test_get_peft_model_selects_the_same_entries_as_select_masks(tiny_bert_dir):
    plain = base(tiny_bert_dir)
    want = select_masks(plain, MagnitudeMaskConfig(density=0.05))
    model = get_peft_model(base(tiny_bert_dir), SparseFTConfig(density=0.05, task_type="TOKEN_CLS"))
    layers = sparseft_layers(model)
    assert sorted(layers) == sorted(want)
    for name, layer in layers.items():
        got = torch.zeros(want[name].numel(), dtype=torch.bool)
        got[layer.sparseft_indices["default"]] = True
        assert torch.equal(got.view(want[name].shape), want[name]), name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("sparseft_values" in n or "classifier" in n for n in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if "sparseft_values" in n) == \
        sum(int(m.sum()) for m in want.values())


def test_only_masked_entries_change_and_merge_equals_sparseft_merge(tiny_bert_dir):
    model = get_peft_model(base(tiny_bert_dir), SparseFTConfig(density=0.05, task_type="TOKEN_CLS"))
    losses = train_steps(model)
    assert losses[-1] < losses[0]
    layers = sparseft_layers(model)
    idx = {n: layer.sparseft_indices["default"].clone() for n, layer in layers.items()}
    vals = {n: layer.sparseft_values["default"].detach().clone() for n, layer in layers.items()}
    head = {k: v.detach().clone() for k, v in model.base_model.model.classifier.modules_to_save["default"]
            .state_dict().items()}
    x = batch(seed=1)
    with torch.no_grad():
        want_logits = model(**x).logits
    merged = model.merge_and_unload()

    # sparseft's own engine on a fresh base with the same entries and deltas
    ref = base(tiny_bert_dir)
    w0 = {n: p.detach().clone() for n, p in ref.named_parameters()}
    masks = {}
    for n, i in idx.items():
        m = torch.zeros(w0[n].numel(), dtype=torch.bool)
        m[i] = True
        masks[n] = m.view(w0[n].shape)
    for p in ref.parameters():
        p.requires_grad_(False)
    for n, layer in sparsify_(ref, masks).items():
        order = torch.argsort(idx[n])
        assert torch.equal(layer.indices, idx[n][order])
        layer.values.data.copy_(vals[n][order])
    merge_sparse_(ref)
    ref.classifier.load_state_dict(head)
    got = dict(merged.named_parameters())
    for n, p in ref.named_parameters():
        assert torch.equal(got[n], p), n  # bit-equal, every tensor
    for n in idx:  # only the selected entries moved
        changed = (got[n] != w0[n]).reshape(-1)
        assert not changed[~masks[n].reshape(-1)].any()
    with torch.no_grad():
        assert torch.allclose(merged(**x).logits, want_logits, atol=1e-5)


def test_save_pretrained_holds_only_sparse_state_and_reloads(tiny_bert_dir, tmp_path):
    model = get_peft_model(base(tiny_bert_dir), SparseFTConfig(density=0.05, task_type="TOKEN_CLS"))
    train_steps(model)
    x = batch(seed=2)
    with torch.no_grad():
        want = model(**x).logits
    model.save_pretrained(tmp_path / "ad")
    files = sorted(p.name for p in (tmp_path / "ad").iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    kinds = {k.rsplit(".", 1)[-1] if "sparseft_" in k else "head" for k in saved}
    assert kinds == {"sparseft_indices", "sparseft_values", "head"}
    assert all(k.startswith("base_model.model.classifier.") for k in saved if "sparseft_" not in k)
    k = sum(v.numel() for key, v in saved.items() if key.endswith("sparseft_values"))
    assert k == sum(layer.sparseft_values["default"].numel() for layer in sparseft_layers(model).values())
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SPARSEFT" and config["base_fingerprint"].startswith("sha256:")

    loaded = PeftModel.from_pretrained(base(tiny_bert_dir), tmp_path / "ad")
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, want)
    # the reloaded adapter merges to the same weights as the trained one
    a, b = model.merge_and_unload(), loaded.merge_and_unload()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_loading_onto_another_base_fails_loudly(tiny_bert_dir, tmp_path):
    model = get_peft_model(base(tiny_bert_dir), SparseFTConfig(density=0.05, task_type="TOKEN_CLS"))
    model.save_pretrained(tmp_path / "ad")
    other = base(tiny_bert_dir)
    with torch.no_grad():
        other.bert.encoder.layer[0].attention.self.query.weight[0, 0] += 1.0
    with pytest.raises(ValueError, match="trained on base"):
        PeftModel.from_pretrained(other, tmp_path / "ad")


def test_unload_and_unmerge_restore_the_base_bit_for_bit(tiny_bert_dir):
    plain = base(tiny_bert_dir)
    w0 = {n: p.detach().clone() for n, p in plain.named_parameters()}
    model = get_peft_model(plain, SparseFTConfig(density=0.05))
    train_steps(model)
    model.merge_adapter()
    model.unmerge_adapter()
    restored = model.unload()
    for n, p in restored.named_parameters():
        assert torch.equal(p, w0[n]), n


def test_data_driven_mask_is_pending_until_selected(tiny_bert_dir):
    model = get_peft_model(base(tiny_bert_dir), SparseFTConfig(density=0.05, mask="fisher",
                                                               mask_options={"n_batches": 2}, task_type="TOKEN_CLS"))
    assert all(layer.sparseft_values["default"].numel() == 0 for layer in sparseft_layers(model).values())
    model.train()
    with pytest.raises(RuntimeError, match="SparseFTCallback"):
        model(**batch())
    counts = select_sparseft_masks_(model, batches=[batch(seed=s) for s in range(2)])
    total = sum(p.numel() for n, p in base(tiny_bert_dir).named_parameters() if n in counts)
    assert sum(counts.values()) == round(0.05 * total)
    assert train_steps(model, steps=2)  # trains now


def test_bad_config_fields_fail_where_they_enter():
    with pytest.raises(ValueError, match="density"):
        SparseFTConfig(density=2.0)
    with pytest.raises(ValueError, match="unknown mask method|valid choices"):
        SparseFTConfig(mask="nope")
    with pytest.raises(ValueError, match="unknown field"):
        SparseFTConfig(mask="fisher", mask_options={"n_batchez": 3})


def test_a_reused_config_selects_again_and_a_bf16_base_loads_with_a_warning(tiny_bert_dir, tmp_path):
    cfg = SparseFTConfig(density=0.05, task_type="TOKEN_CLS")
    first = get_peft_model(base(tiny_bert_dir), cfg)
    again = get_peft_model(base(tiny_bert_dir), cfg)  # fingerprint already filled: checked, then selected
    assert all(layer.sparseft_values["default"].numel() == first_layer.sparseft_values["default"].numel()
               for layer, first_layer in zip(sparseft_layers(again).values(), sparseft_layers(first).values()))
    assert sum(layer.sparseft_values["default"].numel() for layer in sparseft_layers(again).values()) > 0
    first.save_pretrained(tmp_path / "ad")
    with pytest.warns(UserWarning, match="cannot be checked"):
        loaded = PeftModel.from_pretrained(base(tiny_bert_dir).to(torch.bfloat16), tmp_path / "ad")
    assert next(iter(sparseft_layers(loaded).values())).sparseft_values["default"].numel() > 0


def test_two_adapters_switch_merge_and_delete(tiny_bert_dir):
    plain = base(tiny_bert_dir)
    w0 = {n: p.detach().clone() for n, p in plain.named_parameters()}
    model = get_peft_model(plain, SparseFTConfig(density=0.05, mask="random", mask_options={"seed": 1}))
    model.add_adapter("b", SparseFTConfig(density=0.02, mask="random", mask_options={"seed": 2}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sparseft_values" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    x = batch(seed=3)
    model.eval()
    with torch.no_grad():
        out_a = model(**x).logits
        model.set_adapter("b")
        out_b = model(**x).logits
        with model.disable_adapter():
            out_base = model(**x).logits
    assert not torch.equal(out_a, out_b) and not torch.equal(out_b, out_base)
    k_b = sum(layer.sparseft_values["b"].numel() for layer in sparseft_layers(model, "b").values())
    k_a = sum(layer.sparseft_values["default"].numel() for layer in sparseft_layers(model, "default").values())
    assert 0 < k_b < k_a
    model.delete_adapter("default")
    assert not sparseft_layers(model, "default")
    merged = model.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(merged(**x).logits, out_b, atol=1e-5)
    changed = sum(int((p != w0[n]).sum()) for n, p in merged.named_parameters() if n in w0)
    assert 0 < changed <= k_b  # only adapter b's entries were merged


def test_embedding_targets_train_sparsely_and_save_without_the_matrix(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with pytest.warns(UserWarning, match="save_embedding_layers=False"):
        cfg = SparseFTConfig(density=0.05, target_modules=["embed_tokens", "q_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    ids = torch.randint(5, 60, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("embed_tokens.sparseft_values" in n for n in grads) and all("sparseft_values" in n for n in grads)
    model.save_pretrained(tmp_path / "ad", save_embedding_layers=False)
    saved = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert saved and all("sparseft_" in k for k in saved)


@pytest.mark.parametrize("mask,options", [("fisher", {"n_batches": 2}), ("lottery", {"steps": 2, "lr": 1e-2})])
def test_data_driven_selection_matches_select_masks(tiny_bert_dir, mask, options):
    from sparseft.masks.select import mask_config

    batches = [batch(seed=s) for s in range(2)]
    want = select_masks(base(tiny_bert_dir), mask_config(mask, density=0.05, **options), batches=batches)
    model = get_peft_model(base(tiny_bert_dir), SparseFTConfig(density=0.05, mask=mask, mask_options=options,
                                                               task_type="TOKEN_CLS"))
    select_sparseft_masks_(model, batches=batches)
    for name, layer in sparseft_layers(model).items():
        got = torch.zeros(want[name].numel(), dtype=torch.bool)
        got[layer.sparseft_indices["default"]] = True
        assert torch.equal(got.view(want[name].shape), want[name]), name

"""Training behaviour of the sparse parametrisation: density 1.0 equals full fine-tuning, O(k)
optimizer state and no dense gradients, checkpoint/resume, gradient accumulation, regrow's
optimizer-state reset, causal LMs and non-Linear targets."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from sft_toys import collate, killing_loss, ner_data, ner_model, train_cfg, weights, write_cls_file, write_ner_files
from sparseft.masks.select import mask_config, select_masks
from sparseft.sft import sparse_finetune
from sparseft.sft.layer import SparseDelta, merge_sparse_, sparsify_
from sparseft.sft.regrow import RegrowHook, track_optimizer
from sparseft.train.loop import train


@pytest.fixture(scope="module")
def data(tiny_tokenizer, tmp_path_factory):
    train_file, dev = write_ner_files(tmp_path_factory.mktemp("ner"))
    return ner_data(tiny_tokenizer, train_file, dev)


class CaptureOptimizer:
    """Records the optimizer that steps during the block (test-side use of the same torch hook)."""

    def __enter__(self):
        self.optimizer = None
        self.handle = register_optimizer_step_post_hook(lambda opt, a, k: setattr(self, "optimizer", opt))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_density_one_matches_full_finetuning(data, tiny_bert_dir, tiny_tokenizer, tmp_path):
    sft_model = ner_model(tiny_bert_dir, data.labels)
    _, diff = sparse_finetune(sft_model, data.train, train_cfg(tmp_path / "sft"),
                              mask_config("magnitude", density=1.0), collate_fn=collate(tiny_tokenizer))
    # full fine-tuning of exactly the same parameters: targeted Linear weights + the new head
    full = ner_model(tiny_bert_dir, data.labels)
    trainable = set(diff.indices) | set(diff.dense)
    for name, p in full.named_parameters():
        p.requires_grad_(name in trainable)
    train(full, data.train, train_cfg(tmp_path / "full"), collate_fn=collate(tiny_tokenizer))
    a, b = weights(sft_model), weights(full)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert any(not torch.equal(a[k], weights(ner_model(tiny_bert_dir, data.labels))[k]) for k in diff.indices)


def test_optimizer_state_and_gradients_are_o_k(data, tiny_bert_dir, tiny_tokenizer, tmp_path):
    model = ner_model(tiny_bert_dir, data.labels)
    with CaptureOptimizer() as cap:
        _, diff = sparse_finetune(model, data.train, train_cfg(tmp_path), mask_config("random", density=0.02),
                                  collate_fn=collate(tiny_tokenizer))
    state = [t for s in cap.optimizer.state.values() for t in s.values() if t.ndim > 0]
    trained = diff.count + diff.dense_count
    assert sum(t.numel() for t in state) == 2 * trained  # exp_avg + exp_avg_sq, nothing dense
    opt_params = [p for g in cap.optimizer.param_groups for p in g["params"]]
    assert sum(p.numel() for p in opt_params) == trained


def test_backward_keeps_no_dense_gradient(data, tiny_bert_dir, tiny_tokenizer):
    model = ner_model(tiny_bert_dir, data.labels)
    masks = select_masks(model, mask_config("magnitude", density=0.1))
    for p in model.parameters():
        p.requires_grad_(False)
    layers = sparsify_(model, masks)
    model(**collate(tiny_tokenizer)(data.train[:4])).loss.backward()
    for layer in layers.values():
        assert layer.values.grad is not None and layer.values.grad.shape == layer.values.shape
        assert layer.base.weight.grad is None and not layer.base.weight.requires_grad
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".values") for n in trainable)
    merge_sparse_(model, merge=False)


def test_sparse_linear_gradient_matches_dense_autograd():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 5)
    idx = torch.tensor([0, 7, 13, 29])
    ref_w = lin.weight.detach().clone().requires_grad_(True)
    lin.weight.requires_grad_(False)
    layer = SparseDelta(lin, idx)
    with torch.no_grad():
        layer.values.copy_(torch.randn(4))
    x = torch.randn(3, 2, 6, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    layer(x).pow(2).sum().backward()
    w = ref_w.detach().reshape(-1).index_add(0, idx, layer.values.detach()).view(5, 6).requires_grad_(True)
    torch.nn.functional.linear(x_ref, w, lin.bias).pow(2).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)
    assert torch.allclose(layer.values.grad, w.grad.reshape(-1)[idx], atol=1e-6)


def test_resume_restores_values(data, tiny_bert_dir, tiny_tokenizer, tmp_path):
    cfg = mask_config("fisher", density=0.05, n_batches=2)

    def run(out, crash_at=None):
        model = ner_model(tiny_bert_dir, data.labels)
        loss_fn = killing_loss(crash_at)

        tc = train_cfg(out, max_steps=6, resume=True)  # 3 steps per epoch: a checkpoint at step 3
        result, diff = sparse_finetune(model, data.train, tc, cfg, collate_fn=collate(tiny_tokenizer),
                                       loss_fn=loss_fn)
        return model, diff

    straight, _ = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crash_at=2 + 5)  # 2 fisher batches, then killed during step 5
    resumed, diff = run(tmp_path / "b")
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b" / "sft_masks.safetensors").exists()


def test_gradient_accumulation_matches_a_large_batch(tiny_bert_dir, tiny_tokenizer, tmp_path):
    """batch 4 x accumulate 2 == batch 8 for classification (example-mean loss) without dropout."""
    from sparseft.load.data import DataConfig, build_task_data
    from sparseft.load.model import load_model

    data = build_task_data(DataConfig(task="cls", train=str(write_cls_file(tmp_path))), tiny_tokenizer)

    def run(out, **kw):
        torch.manual_seed(0)
        model = load_model(str(tiny_bert_dir), "cls", labels=data.labels)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        _, diff = sparse_finetune(model, data.train, train_cfg(out, **kw), mask_config("magnitude", density=0.05),
                                  collate_fn=collate(tiny_tokenizer))
        return diff

    d1, d2 = run(tmp_path / "a", batch_size=8), run(tmp_path / "b", batch_size=4, grad_accum=2)
    for n in d1.indices:
        assert torch.equal(d1.indices[n], d2.indices[n])
        assert torch.allclose(d1.values[n], d2.values[n], atol=1e-5)


def test_regrow_resets_optimizer_state_of_regrown_entries():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    for p in model.parameters():
        p.requires_grad_(False)
    masks = {"0.weight": torch.zeros(8, 8, dtype=torch.bool)}
    masks["0.weight"].view(-1)[:10] = True
    layers = sparsify_(model, masks)
    layer = layers["0.weight"]
    cfg = mask_config("regrow", count=10, every=2, grad_window=2, drop_fraction=0.3)
    opt = torch.optim.AdamW([layer.values], lr=0.1)
    with track_optimizer([layer.values]) as ref:
        hook = RegrowHook(layers, cfg, ref)
        for step in (1, 2):
            model(torch.randn(4, 8)).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
            before = layer.indices.clone()
            hook(model, step)
    moved = (layer.indices != before).nonzero().reshape(-1)
    assert moved.numel() == 3 and layer.indices.unique().numel() == 10
    assert torch.isin(layer.indices[moved], before).logical_not().all()  # regrown elsewhere
    state = opt.state[layer.values]
    assert (state["exp_avg"][moved] == 0).all() and (state["exp_avg_sq"][moved] == 0).all()
    kept = torch.ones(10, dtype=torch.bool)
    kept[moved] = False
    assert (state["exp_avg_sq"][kept] > 0).all() and (layer.values[moved] == 0).all()
    assert layer.acc_grad is not None  # window == every: accumulation goes on for the next period


def test_causal_lm_and_embedding_targets(tiny_llama_dir, tiny_tokenizer, tmp_path):
    from sparseft.load.model import load_model
    from sparseft.load.tokenize import tokenize_lm

    model = load_model(str(tiny_llama_dir), "lm")
    w0 = weights(model)
    text = " ".join(["john visited paris and mary works at acme corp ."] * 40)
    feats = tokenize_lm(text, tiny_tokenizer, block_size=32)
    cfg = mask_config("fisher", density=0.05, n_batches=2, targets=["Linear", "Embedding"])
    _, diff = sparse_finetune(model, feats, train_cfg(tmp_path), cfg, collate_fn=collate(tiny_tokenizer))
    assert "model.embed_tokens.weight" in diff.manifest["fingerprint_tensors"]
    assert not diff.dense and diff.manifest["task"] == "lm"
    changed = {k for k in w0 if not torch.equal(w0[k], weights(model)[k])}
    assert changed and changed <= set(diff.indices)

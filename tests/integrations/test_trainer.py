"""Sparse fine-tuning inside transformers.Trainer and TRL's SFTTrainer (tiny random models, offline)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from peft import get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from sparseft.integrations import SparseFTCallback, SparseFTConfig, sparseft_layers  # noqa: E402
from sft_toys import ner_model  # noqa: E402

LABELS = ["O", "B-PER", "I-PER"]


class ToyTokens(torch.utils.data.Dataset):
    """Token classification with a learnable rule: label = token id % 3."""

    def __init__(self, n=32, seq=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 60, (n, seq), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids % 3}


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=8, learning_rate=2e-2,
                logging_steps=1, save_strategy="steps", save_steps=4, report_to="none", use_cpu=True,
                disable_tqdm=True, seed=0, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0)
    base.update(kw)
    return TrainingArguments(**base)


def losses(trainer):
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


def changed_only_at_selected(merged, base_params, layers_idx):
    got = dict(merged.named_parameters())
    for name, p in base_params.items():
        if name.startswith("classifier."):
            continue
        diff = (got[name] != p).reshape(-1)
        if name in layers_idx:
            allowed = torch.zeros_like(diff)
            allowed[layers_idx[name]] = True
            assert not diff[~allowed].any(), name
        else:
            assert not diff.any(), f"{name} is not targeted but changed"


@pytest.mark.parametrize("mask,options", [("magnitude", {}), ("fisher", {"n_batches": 2}),
                                          ("lottery", {"steps": 3, "lr": 1e-2})])
def test_trainer_trains_only_masked_entries_and_checkpoints_hold_only_sparse_state(tiny_bert_dir, tmp_path,
                                                                                  mask, options):
    base = ner_model(tiny_bert_dir, LABELS, seed=0)
    w0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, SparseFTConfig(density=0.05, mask=mask, mask_options=options,
                                                task_type="TOKEN_CLS"))
    trainer = Trainer(model=model, args=args(tmp_path), train_dataset=ToyTokens(), callbacks=[SparseFTCallback()])
    trainer.train()
    curve = losses(trainer)
    assert curve[-1] < curve[0] * 0.9
    layers = sparseft_layers(model)
    targeted = sum(w0[n].numel() for n in layers)
    assert sum(layer.sparseft_values["default"].numel() for layer in layers.values()) == round(0.05 * targeted)
    assert not any(layer.pending for layer in layers.values())
    idx = {n: layer.sparseft_indices["default"].clone() for n, layer in layers.items()}

    ckpt = tmp_path / "out" / "checkpoint-4"
    names = {p.name for p in ckpt.iterdir()}
    assert "adapter_model.safetensors" in names and "README.md" in names
    card = (ckpt / "README.md").read_text()
    assert "library_name: peft" in card and "sparse-adapter" in card and "| train | loss |" in card
    assert not names & {"model.safetensors", "pytorch_model.bin"}
    saved = load_file(str(ckpt / "adapter_model.safetensors"))
    assert all("sparseft_" in k or ".classifier." in k for k in saved), sorted(saved)[:5]
    k = sum(v.numel() for key, v in saved.items() if key.endswith("sparseft_values"))
    assert k == sum(i.numel() for i in idx.values())
    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
    state_numel = sum(s["exp_avg"].numel() for s in optim["state"].values())
    head = sum(p.numel() for n, p in w0.items() if n.startswith("classifier."))
    assert state_numel == k + head  # AdamW state is O(k) plus the dense head

    changed_only_at_selected(model.merge_and_unload(), w0, idx)


def test_regrow_runs_inside_trainer(tiny_bert_dir, tmp_path):
    model = get_peft_model(ner_model(tiny_bert_dir, LABELS, seed=0),
                           SparseFTConfig(density=0.05, mask="regrow", task_type="TOKEN_CLS",
                                          mask_options={"every": 2, "grad_window": 1, "drop_fraction": 0.5}))
    before = {n: layer.sparseft_indices["default"].clone() for n, layer in sparseft_layers(model).items()}
    callback = SparseFTCallback()
    Trainer(model=model, args=args(tmp_path, save_strategy="no"), train_dataset=ToyTokens(),
            callbacks=[callback]).train()
    assert [h["step"] for h in callback.history] == [2, 4, 6]
    assert all(h["replaced"] > 0 for h in callback.history)
    after = {n: layer.sparseft_indices["default"] for n, layer in sparseft_layers(model).items()}
    assert any(not torch.equal(torch.sort(before[n]).values, torch.sort(after[n]).values) for n in before)
    assert all(len(torch.unique(i)) == i.numel() for i in after.values())  # budget exact, no duplicates


def test_resume_from_checkpoint_keeps_the_selected_entries(tiny_bert_dir, tmp_path):
    def run(max_steps, resume=None):
        model = get_peft_model(ner_model(tiny_bert_dir, LABELS, seed=0),
                               SparseFTConfig(density=0.05, mask="fisher", mask_options={"n_batches": 2},
                                              task_type="TOKEN_CLS"))
        callback = SparseFTCallback()
        trainer = Trainer(model=model, args=args(tmp_path, max_steps=max_steps), train_dataset=ToyTokens(),
                          callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        assert bool(callback.selected) == (resume is None)  # a resumed run loads its entries, no reselection
        return {n: layer.sparseft_indices["default"].clone() for n, layer in sparseft_layers(model).items()}

    first = run(4)
    resumed = run(8, resume=str(tmp_path / "out" / "checkpoint-4"))
    assert first.keys() == resumed.keys()
    assert all(torch.equal(first[n], resumed[n]) for n in first)


def test_trl_sft_trainer_takes_sparseft_config(tiny_llama_dir, tiny_tokenizer, tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    w0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    text = ["john smith visited paris .", "mary works at acme corp .", "the german team was in london ."] * 8
    cfg = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=10, per_device_train_batch_size=8,
                        learning_rate=2e-2, logging_steps=1, save_strategy="steps", save_steps=5, report_to="none",
                        use_cpu=True, disable_tqdm=True, max_length=32, lr_scheduler_type="constant", seed=0)
    trainer = trl.SFTTrainer(model=base, args=cfg, train_dataset=Dataset.from_dict({"text": text}),
                             processing_class=tiny_tokenizer,
                             peft_config=SparseFTConfig(density=0.05, task_type="CAUSAL_LM"),
                             callbacks=[SparseFTCallback()])
    trainer.train()
    curve = losses(trainer)
    assert curve[-1] < curve[0]
    model = trainer.model
    idx = {n: layer.sparseft_indices["default"].clone() for n, layer in sparseft_layers(model).items()}
    assert idx and not any("lm_head" in n or "embed" in n for n in idx)
    saved = load_file(str(tmp_path / "trl" / "checkpoint-5" / "adapter_model.safetensors"))
    assert saved and all("sparseft_" in k for k in saved)
    changed_only_at_selected(model.merge_and_unload(), w0, idx)

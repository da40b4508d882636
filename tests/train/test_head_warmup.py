"""Head warm-up (train/head_warmup.py): only the head moves during the probe, sparse fine-tuning
chooses its mask from the probed head's gradients and starts from that head, LoRA starts from it
too, and bad settings are refused in one line."""

from __future__ import annotations

import pytest
import torch

from sft_toys import collate, killing_loss, ner_data, ner_model, train_cfg, weights, write_ner_files
from sparseft.masks.select import mask_config, select_masks
from sparseft.sft import sparse_finetune
from sparseft.train.defaults import HEAD_WARMUP_STEPS
from sparseft.train.head_warmup import dense_head_parameters, warm_up_heads_, warmup_steps, warmup_steps_data
from sparseft.train.loop import default_loss, selection_batches
from sparseft.sft.stage import SFTConfig

HEAD = ["classifier.weight", "classifier.bias"]


@pytest.fixture(scope="module")
def data(tiny_tokenizer, tmp_path_factory):
    train_file, dev = write_ner_files(tmp_path_factory.mktemp("ner"))
    return ner_data(tiny_tokenizer, train_file, dev)


def test_the_probe_moves_only_the_head_and_lowers_its_loss(data, tiny_bert_dir, tiny_tokenizer, tmp_path):
    model = ner_model(tiny_bert_dir, data.labels)
    model.train()
    base = weights(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    steps = warmup_steps_data(data.train, train_cfg(tmp_path), collate(tiny_tokenizer), 12)
    assert [len(s) for s in steps] == [1] * 12                     # one process: one batch per step
    stats = warm_up_heads_(model, dense_head_parameters(model, ["classifier"]), steps, lr=1e-2,
                           loss_fn=default_loss, device=torch.device("cpu"))
    after = weights(model)
    assert stats["steps"] == 12 and stats["last_loss"] < stats["first_loss"]
    assert all(not torch.equal(after[n], base[n]) for n in HEAD)
    assert all(torch.equal(after[n], base[n]) for n in base if n not in HEAD)   # the base is untouched
    assert model.training and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_sft_selects_the_mask_after_the_probe_and_keeps_the_probed_head(data, tiny_bert_dir, tiny_tokenizer,
                                                                        tmp_path):
    cfg = mask_config("fisher", density=0.05, n_batches=2)
    plain = ner_model(tiny_bert_dir, data.labels)
    probed = ner_model(tiny_bert_dir, data.labels)
    steps = warmup_steps_data(data.train, train_cfg(tmp_path), collate(tiny_tokenizer), 20)
    warm_up_heads_(probed, dense_head_parameters(probed, ["classifier"]), steps, lr=1e-2, loss_fn=default_loss,
                   device=torch.device("cpu"))
    head_cfg = cfg.replace(ignore=[*cfg.ignore, "classifier"])
    sel_batches = selection_batches(data.train, train_cfg(tmp_path), collate(tiny_tokenizer), 2)
    expected = select_masks(probed, head_cfg, batches=sel_batches)
    unprobed = select_masks(plain, head_cfg, batches=sel_batches)
    assert any(not torch.equal(expected[n], unprobed[n]) for n in expected)   # the probe changes the mask

    model = ner_model(tiny_bert_dir, data.labels)
    _, diff = sparse_finetune(model, data.train, train_cfg(tmp_path / "run", max_steps=1, lr=1e-12), cfg,
                              collate_fn=collate(tiny_tokenizer), head_warmup_steps=20, head_warmup_lr=1e-2)
    chosen = {n: torch.nonzero(m.reshape(-1)).reshape(-1) for n, m in expected.items() if m.any()}
    assert set(diff.indices) == set(chosen)
    assert all(torch.equal(diff.indices[n], flat) for n, flat in chosen.items())
    probed_head = weights(probed)
    assert all(torch.allclose(diff.dense[n], probed_head[n], atol=1e-6) for n in HEAD)   # lr 1e-12: ~the probe's
    assert diff.manifest["head_warmup"]["steps"] == 20 and diff.manifest["head_warmup"]["lr"] == 1e-2


def test_bad_settings_are_one_line_errors(data, tiny_bert_dir, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="head_warmup_steps must be >= 0"):
        SFTConfig(head_warmup_steps=-1)
    with pytest.raises(ValueError, match="head_warmup_lr must be > 0"):
        SFTConfig(head_warmup_steps=10, head_warmup_lr=0.0)
    model = ner_model(tiny_bert_dir, data.labels)
    with pytest.raises(ValueError, match="no task head to warm up"):
        sparse_finetune(model, data.train, train_cfg(tmp_path / "run"), mask_config("magnitude", density=0.05),
                        collate_fn=collate(tiny_tokenizer), heads=[], head_warmup_steps=5)


def test_lora_starts_from_the_probed_head(tiny_bert_dir, toy_ner_files, tmp_path):
    pytest.importorskip("peft")
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run

    train, dev = toy_ner_files

    def recipe(out, **extra):
        stage = {"name": "finetune", "method": "lora", "rank": 2, "max_steps": 1, "batch_size": 8, "lr": 1e-12,
                 "warmup_ratio": 0.0, "progress": False, "resume": False, **extra}
        return Recipe.from_dict({"model": str(tiny_bert_dir), "output_dir": str(out), "seed": 0,
                                 "data": {"task": "ner", "train": str(train), "eval": str(dev), "max_length": 32},
                                 "stages": [stage]})

    plain = run(recipe(tmp_path / "plain", head_warmup_steps=0), print_report=False)
    probed = run(recipe(tmp_path / "probed", head_warmup_steps=20, head_warmup_lr=1e-2), print_report=False)
    sec = probed.report.sections["finetune"]
    assert sec["head_warmup"]["steps"] == 20 and sec["head_warmup"]["last_loss"] < sec["head_warmup"]["first_loss"]
    assert "head_warmup" not in plain.report.sections["finetune"]
    a, b = weights(plain.model), weights(probed.model)
    assert not torch.allclose(a["classifier.weight"], b["classifier.weight"])          # the probe moved the head
    assert torch.allclose(a["bert.encoder.layer.0.output.dense.weight"],               # lr 1e-12: base as loaded
                          b["bert.encoder.layer.0.output.dense.weight"], atol=1e-6)


def test_the_stages_warm_up_by_default_only_where_there_is_a_head(tiny_bert_dir, toy_ner_files, tmp_path):
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run

    head = {"w": torch.nn.Parameter(torch.zeros(2))}
    assert warmup_steps(None, head) == HEAD_WARMUP_STEPS == 300 and warmup_steps(None, {}) == 0
    assert warmup_steps(0, head) == 0 and warmup_steps(7, {}) == 7       # explicit counts are kept (7: an error later)
    train, dev = toy_ner_files
    stage = {"name": "finetune", "method": "sft", "mask": "fisher", "density": 0.05, "mask_options": {"n_batches": 2},
             "max_steps": 1, "batch_size": 8, "progress": False, "resume": False}
    ctx = run(Recipe.from_dict({"model": str(tiny_bert_dir), "output_dir": str(tmp_path / "run"),
                                "data": {"task": "ner", "train": str(train), "eval": str(dev), "max_length": 32},
                                "stages": [stage]}), print_report=False)
    assert ctx.report.sections["finetune"]["head_warmup"]["steps"] == HEAD_WARMUP_STEPS


def test_a_killed_run_with_warm_up_resumes_bit_exactly(data, tiny_bert_dir, tiny_tokenizer, tmp_path):
    """The probe runs again on resume (deterministic), so the loop's identity, which hashes the
    initial trainable weights (the probed head among them), matches the checkpoint's."""
    cfg = mask_config("fisher", density=0.05, n_batches=2)

    def run(out, crash_at=None):
        model = ner_model(tiny_bert_dir, data.labels)
        loss_fn = killing_loss(crash_at)

        tc = train_cfg(out, max_steps=8, resume=True, save_every=3)
        return sparse_finetune(model, data.train, tc, cfg, collate_fn=collate(tiny_tokenizer), loss_fn=loss_fn,
                               head_warmup_steps=5, head_warmup_lr=1e-2)[1]

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crash_at=5 + 2 + 5)            # warm-up, selection, then in training step 5
    resumed = run(tmp_path / "b")
    assert set(resumed.indices) == set(straight.indices)
    assert all(torch.equal(resumed.values[n], straight.values[n]) for n in straight.values)
    assert all(torch.equal(resumed.dense[n], straight.dense[n]) for n in straight.dense)

"""SpIEL-AG / SpIEL-MA (`spiel_ag`, `spiel_ma`): configs and their rate schedule, reselection
checked step by step against straightforward dense references on a toy two-layer net (which
entries are dropped and regrown, budget, reset values and AdamW state), then end to end on the
tiny BERT and Llama and through `sparseft train --method sft --mask spiel_ag`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from sft_toys import collate, logits, ner_data, ner_model, train_cfg, weights, write_ner_files
from sparseft.config.base import config_from_dict
from sparseft.export.sparse_diff import apply_diff_, load_diff, save_diff
from sparseft.masks.select import mask_config
from sparseft.sft import sparse_finetune
from sparseft.sft.api import MASKS_FILE
from sparseft.sft.layer import sparsify_
from sparseft.sft.spiel import SpielHook

NAMES = ("0.weight", "2.weight")


# ---- configs and the schedule ------------------------------------------------------------------

@pytest.mark.parametrize("method, extra", [("spiel_ag", {"accumulation_steps": 3}),
                                           ("spiel_ma", {"estimate": "min", "beta": 0.9})])
def test_config_round_trip(method, extra):
    cfg = mask_config(method, count=50, interval=7, initial_rate=0.3, schedule="cosine", init="random", **extra)
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again == cfg and type(again) is type(cfg)
    default = mask_config(method)
    assert (default.interval, default.initial_rate, default.schedule, default.init) == (20, 0.2, "linear", "fisher")
    assert default.batches_needed() == 32 and cfg.batches_needed() == 0


@pytest.mark.parametrize("method, fields, match", [
    ("spiel_ag", {"interval": 0}, "interval"),
    ("spiel_ag", {"initial_rate": 0.0}, "initial_rate"),
    ("spiel_ma", {"initial_rate": 1.5}, "initial_rate"),
    ("spiel_ag", {"schedule": "exponential"}, "schedule"),
    ("spiel_ag", {"interval": 4, "accumulation_steps": 5}, "accumulation_steps"),
    ("spiel_ag", {"init": "lottery"}, "init"),
    ("spiel_ma", {"estimate": "mean"}, "estimate"),
    ("spiel_ma", {"beta": 0.0}, "beta"),
    ("spiel_ma", {"interval": "often"}, "interval"),
])
def test_bad_fields_are_refused(method, fields, match):
    with pytest.raises(ValueError, match=match):
        mask_config(method, **fields)


def test_rate_schedules_decay_as_documented():
    linear = mask_config("spiel_ag", initial_rate=0.2)
    assert linear.rate_at(0, 100) == pytest.approx(0.2)
    assert linear.rate_at(50, 100) == pytest.approx(0.1)
    assert linear.rate_at(100, 100) == 0.0
    cosine = mask_config("spiel_ma", initial_rate=0.2, schedule="cosine")
    assert cosine.rate_at(25, 100) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert cosine.rate_at(50, 100) == pytest.approx(0.1) and cosine.rate_at(100, 100) == pytest.approx(0.0)
    for cfg in (linear, cosine):
        rates = [cfg.rate_at(t, 100) for t in range(0, 101, 10)]
        assert all(a > b for a, b in zip(rates, rates[1:]))
    constant = mask_config("spiel_ag", initial_rate=0.3, schedule="constant")
    assert {constant.rate_at(t, 100) for t in (0, 40, 99)} == {0.3}


# ---- reselection vs dense references on a toy net ------------------------------------------------

def toy() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    for p in model.parameters():
        p.requires_grad_(False)
    masks = {}
    for name, k in zip(NAMES, (20, 12)):
        w = model.get_parameter(name)
        m = torch.zeros(w.numel(), dtype=torch.bool)
        m[torch.randperm(w.numel())[:k]] = True
        masks[name] = m.view(w.shape)
    return model, sparsify_(model, masks)


def dense_grads(model, layers, x, y) -> dict[str, torch.Tensor]:
    """d loss / d W at W0 + delta, through a plain functional copy of the net."""
    ws = [layers[n].merged_weight().detach().requires_grad_(True) for n in NAMES]
    h = torch.tanh(F.linear(x, ws[0], model[0].bias))
    loss = (F.linear(h, ws[1], model[2].bias) - y).pow(2).mean()
    return dict(zip(NAMES, torch.autograd.grad(loss, ws)))


def sm3_reference(r, c, g, beta):
    """One SM3 update written row by row: nu_ij = beta * min(r_i, c_j) + g_ij^2; r = max_j, c = max_i."""
    new_r, new_c = torch.empty_like(r), torch.full_like(c, -float("inf"))
    for i in range(g.shape[0]):
        nu = beta * torch.minimum(r[i].expand_as(c), c) + g[i] ** 2
        new_r[i] = nu.max()
        new_c = torch.maximum(new_c, nu)
    return new_r, new_c


def check_reselection(before, layer, opt, score, rate):
    """Budget, dropped = smallest |delta|, regrown = best-scored outside the old mask, resets."""
    idx0, val0, m0, v0 = before
    k = idx0.numel()
    n = min(round(rate * k), score.numel() - k)
    changed = (layer.indices != idx0).nonzero().reshape(-1)
    kept = (layer.indices == idx0).nonzero().reshape(-1)
    assert changed.numel() == n
    assert layer.indices.numel() == k and layer.indices.unique().numel() == k
    if n == 0:  # late in a decaying schedule a small tensor may get no change
        assert torch.equal(layer.values.detach(), val0)
        return 0
    assert val0.abs()[changed].max() <= val0.abs()[kept].min()          # the smallest |delta| left
    outside = score.clone()
    outside[idx0] = -float("inf")
    grown = layer.indices[changed]
    assert not torch.isin(grown, idx0).any()                             # only untrained positions
    nth_best = torch.topk(outside, n).values.min()
    assert (outside[grown] >= nth_best * (1 - 1e-5)).all()               # the n best (ties allowed)
    assert (layer.values[changed] == 0).all() and torch.equal(layer.values[kept], val0[kept])
    state = opt.state[layer.values]
    assert (state["exp_avg"][changed] == 0).all() and (state["exp_avg_sq"][changed] == 0).all()
    assert torch.equal(state["exp_avg"][kept], m0[kept]) and torch.equal(state["exp_avg_sq"][kept], v0[kept])
    return n


@pytest.mark.parametrize("method, options", [
    ("spiel_ag", {"accumulation_steps": 2}),
    ("spiel_ag", {"accumulation_steps": 3, "schedule": "cosine"}),
    ("spiel_ma", {"estimate": "product"}),
    ("spiel_ma", {"estimate": "min", "beta": 0.8}),
])
def test_reselection_matches_dense_reference(method, options):
    total, interval = 13, 3
    cfg = mask_config(method, count=32, interval=interval, initial_rate=0.5, init="random", **options)
    model, layers = toy()
    opt = torch.optim.AdamW([layer.values for layer in layers.values()], lr=0.05)
    hook = SpielHook(layers, cfg, total_steps=total)
    hook.optimizer_ref.optimizer = opt
    gen = torch.Generator().manual_seed(1)
    acc = {n: torch.zeros_like(layers[n].base.weight) for n in NAMES}                 # AG reference
    rows = {n: torch.zeros(layers[n].base.weight.shape[0]) for n in NAMES}            # MA reference
    cols = {n: torch.zeros(layers[n].base.weight.shape[1]) for n in NAMES}
    done, changed = [], 0
    for step in range(1, total + 1):
        x, y = torch.randn(6, 8, generator=gen), torch.randn(6, 4, generator=gen)
        grads = dense_grads(model, layers, x, y)
        (model(x) - y).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        upcoming = -(-step // interval) * interval     # the reselection this step's gradient is for
        for n in NAMES:                                 # what the hook should have seen (not step 1)
            if step > 1 and upcoming < total:
                if method == "spiel_ma":
                    rows[n], cols[n] = sm3_reference(rows[n], cols[n], grads[n], cfg.beta)
                elif step > upcoming - cfg.accumulation_steps:
                    acc[n] += grads[n]
        reselect = hook.is_reselection(step)
        snap, scores = {}, {}
        for n in NAMES:
            layer, st = layers[n], opt.state[layers[n].values]
            snap[n] = (layer.indices.clone(), layer.values.detach().clone(), st["exp_avg"].clone(),
                       st["exp_avg_sq"].clone())
            if reselect and method == "spiel_ag":
                torch.testing.assert_close(layer.acc_grad, acc[n], rtol=1e-5, atol=1e-7)
                scores[n] = acc[n].abs().reshape(-1)
            elif reselect:
                torch.testing.assert_close(layer.acc_grad.row, rows[n], rtol=1e-5, atol=1e-9)
                torch.testing.assert_close(layer.acc_grad.col, cols[n], rtol=1e-5, atol=1e-9)
                scores[n] = (torch.outer(rows[n], cols[n]) if cfg.estimate == "product"
                             else torch.minimum(rows[n][:, None], cols[n][None, :])).reshape(-1)
        hook(model, step)
        if reselect:
            rate = cfg.rate_at(step, total)
            for n in NAMES:
                changed += check_reselection(snap[n], layers[n], opt, scores[n], rate)
                acc[n].zero_()
            done.append(step)
        else:
            assert all(torch.equal(layers[n].indices, snap[n][0]) for n in NAMES)
    assert done == [3, 6, 9, 12] == [h["step"] for h in hook.history]
    assert changed == sum(h["replaced"] for h in hook.history) > 0
    assert [h["rate"] for h in hook.history] == [cfg.rate_at(t, total) for t in done]
    assert all(layer.acc_grad is None for layer in layers.values())       # freed after the last one


def test_sm3_estimate_bounds_the_summed_squared_gradient():
    """With beta = 1, min(r_i, c_j) >= sum_t g_ij^2 for every entry (SM3's guarantee)."""
    from sparseft.sft.spiel import SM3RowCol

    torch.manual_seed(0)
    weight = torch.zeros(7, 5)
    acc, total = SM3RowCol(weight), torch.zeros(7, 5)
    for _ in range(6):
        g = torch.randn(7, 5) * torch.rand(7, 1)  # rows on different scales
        acc += g
        total += g ** 2
    est = acc.estimate("min").view(7, 5)
    assert (est >= total * (1 - 1e-6)).all() and acc.updates == 6
    assert torch.equal(acc.row, est.amax(1))


# ---- end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tiny_tokenizer, tmp_path_factory):
    train_file, dev = write_ner_files(tmp_path_factory.mktemp("ner"))
    return ner_data(tiny_tokenizer, train_file, dev)


def test_spiel_ag_end_to_end_keeps_k_and_saves_only_the_final_entries(data, tiny_bert_dir, tiny_tokenizer,
                                                                       tmp_path):
    model = ner_model(tiny_bert_dir, data.labels)
    w0 = weights(model)
    cfg = mask_config("spiel_ag", density=0.05, interval=2, accumulation_steps=2, n_batches=2)
    _, diff = sparse_finetune(model, data.train, train_cfg(tmp_path / "run", max_steps=6), cfg,
                              collate_fn=collate(tiny_tokenizer))
    history = diff.manifest["regrow_history"]
    assert [h["step"] for h in history] == [2, 4] and all(h["replaced"] > 0 for h in history)
    assert [h["rate"] for h in history] == [cfg.rate_at(2, 6), cfg.rate_at(4, 6)]
    initial = load_file(str(tmp_path / "run" / MASKS_FILE))  # the mask before training
    targeted = sum(w0[n].numel() for n in diff.manifest["fingerprint_tensors"])
    assert diff.count == round(0.05 * targeted) == sum(t.numel() for t in initial.values())
    trained, moved = weights(model), 0
    for name, idx in diff.indices.items():
        assert idx.numel() == initial[name].numel()                     # per-tensor k unchanged
        dropped = initial[name][~torch.isin(initial[name], idx)]
        moved += dropped.numel()
        assert torch.equal(trained[name].reshape(-1)[dropped], w0[name].reshape(-1)[dropped])  # back at W0
    assert 0 < moved <= sum(h["replaced"] for h in history)
    save_diff(diff, tmp_path / "diff")
    base = ner_model(tiny_bert_dir, data.labels, seed=7)
    apply_diff_(base, load_diff(tmp_path / "diff"))
    assert torch.equal(logits(base, data, tiny_tokenizer), logits(model, data, tiny_tokenizer))


def test_spiel_ma_end_to_end_on_a_causal_lm(tiny_llama_dir, tiny_tokenizer, tmp_path):
    from sparseft.load.model import load_model
    from sparseft.load.tokenize import tokenize_lm

    model = load_model(str(tiny_llama_dir), "lm")
    w0 = weights(model)
    feats = tokenize_lm(" ".join(["john visited paris and mary works at acme corp ."] * 40), tiny_tokenizer,
                        block_size=32)
    cfg = mask_config("spiel_ma", density=0.05, interval=2, init="random")
    _, diff = sparse_finetune(model, feats, train_cfg(tmp_path / "run", max_steps=5), cfg,
                              collate_fn=collate(tiny_tokenizer))
    assert [h["step"] for h in diff.manifest["regrow_history"]] == [2, 4]
    assert all(h["replaced"] > 0 for h in diff.manifest["regrow_history"])
    targeted = sum(w0[n].numel() for n in diff.manifest["fingerprint_tensors"])
    assert diff.count == round(0.05 * targeted) and diff.manifest["mask"] == "spiel_ma"
    trained = weights(model)
    for name in diff.manifest["fingerprint_tensors"]:
        changed = torch.nonzero((w0[name] != trained[name]).reshape(-1)).reshape(-1)
        assert torch.isin(changed, diff.indices.get(name, torch.empty(0, dtype=torch.long))).all()


def test_cli_sft_with_spiel_ag(tiny_bert_dir, tmp_path):
    from sparseft.cli.main import main

    train, dev = write_ner_files(tmp_path / "data")
    out = tmp_path / "run"
    rc = main(["train", "--model", str(tiny_bert_dir), "--train", str(train), "--eval", str(dev),
               "--output-dir", str(out), "--method", "sft", "--mask", "spiel_ag", "--density", "0.05",
               "--epochs", "1", "--batch-size", "8", "--lr", "5e-3", "--mixed-precision", "no", "--no-cost",
               "--set", "progress=false",
               "--set", "mask_options={interval: 2, accumulation_steps: 1, init: random}"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())["stages"]["finetune"]
    assert metrics["mask"] == "spiel_ag" and 0.049 < metrics["density"] < 0.051
    manifest = json.loads((out / "diff" / "manifest.json").read_text())
    assert manifest["method"]["_type"] == "SpielAGMaskConfig"
    assert [h["step"] for h in manifest["regrow_history"]] == [2]


def test_spiel_runs_inside_trainer(tiny_bert_dir, tmp_path):
    """The peft integration: SparseFTCallback runs the same SpielHook with the Trainer's optimizer."""
    pytest.importorskip("peft")
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    from sparseft.integrations import SparseFTCallback, SparseFTConfig, sparseft_layers

    class Tokens(torch.utils.data.Dataset):
        def __init__(self):
            self.ids = torch.randint(5, 60, (32, 8), generator=torch.Generator().manual_seed(0))

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.ids[i] % 3}

    model = get_peft_model(ner_model(tiny_bert_dir, ["O", "B-PER", "I-PER"]),
                           SparseFTConfig(density=0.05, mask="spiel_ma", task_type="TOKEN_CLS",
                                          mask_options={"interval": 2, "init": "random"}))
    before = {n: layer.sparseft_indices["default"].clone() for n, layer in sparseft_layers(model).items()}
    callback = SparseFTCallback()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=8,
                             learning_rate=2e-2, report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
                             save_strategy="no", lr_scheduler_type="constant", warmup_steps=0)
    Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback]).train()
    assert [h["step"] for h in callback.history] == [2, 4] and all(h["replaced"] > 0 for h in callback.history)
    after = {n: layer.sparseft_indices["default"] for n, layer in sparseft_layers(model).items()}
    assert all(after[n].numel() == before[n].numel() == after[n].unique().numel() for n in before)
    assert any(not torch.equal(before[n].sort().values, after[n].sort().values) for n in before)

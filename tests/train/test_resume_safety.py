"""Safe resume on a tiny BERT: the run identity (model, data, config) must match, a finished run
is reported rather than retrained, lean checkpoints (frozen base and LoRA) resume bit-exactly,
corrupt checkpoint files give one-line errors naming the file, stale temporaries are cleaned."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from sparseft.cli.main import main
from sparseft.load.data import DataConfig, build_task_data
from sparseft.load.model import load_model
from sparseft.load.tokenize import PadCollator
from sparseft.train.checkpoint import WEIGHTS, CheckpointError, checkpoint_dir, frozen_names
from sparseft.train.config import TrainConfig
from sparseft.train.identity import ResumeMismatch, run_inputs
from sparseft.train.loop import train


@pytest.fixture
def setup(tiny_bert_dir, tiny_tokenizer, toy_ner_files, tmp_path):
    train_path, dev_path = toy_ner_files
    other_path = tmp_path / "other.conll"
    other_path.write_text(train_path.read_text().replace("paris", "berlin"))
    data = {p: build_task_data(DataConfig(task="ner", train=str(p), eval=str(dev_path)), tiny_tokenizer)
            for p in (train_path, other_path)}
    labels = data[train_path].labels

    def fresh(seed=0):
        torch.manual_seed(seed)
        return load_model(str(tiny_bert_dir), "ner", labels=labels)

    return data, (train_path, other_path), fresh, PadCollator(tiny_tokenizer.pad_token_id)


def _cfg(tmp_path, name="run", **kw):
    base = dict(output_dir=str(tmp_path / name), epochs=1, batch_size=8, lr=5e-3, warmup_ratio=0.0,
                progress=False, log_every=1, eval_every="never", mixed_precision="no")
    base.update(kw)
    return TrainConfig(**base)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_requires_the_same_model_data_and_config(setup, tmp_path):
    data, (a, b), fresh, collate = setup
    train(fresh(), data[a].train, _cfg(tmp_path), collate_fn=collate, inputs=run_inputs("tiny", {"train": str(a)}))
    cases = [  # (model, data, cfg, inputs, expected words in the one-line error)
        (fresh(), data[b].train, _cfg(tmp_path), run_inputs("tiny", {"train": str(b)}),
         [f"train data file: {a.resolve()}", str(b.resolve())]),
        (fresh(), data[b].train, _cfg(tmp_path), None, ["training data: 24 -> 24 examples"]),
        (fresh(), data[a].train, _cfg(tmp_path, lr=1e-3), None, ["config train.lr: 0.005 -> 0.001"]),
        (fresh(), data[a].train, _cfg(tmp_path, epochs=2), None, ["config train.epochs: 1 -> 2"]),
        (fresh(seed=1), data[a].train, _cfg(tmp_path), None, ["initial trainable weights differ"]),
    ]
    for model, features, cfg, inputs, words in cases:
        with pytest.raises(ResumeMismatch) as exc:
            train(model, features, cfg, collate_fn=collate, inputs=inputs)
        msg = str(exc.value)
        assert "\n" not in msg and "--no-resume" in msg and str(checkpoint_dir(tmp_path / "run")) in msg
        for w in words:
            assert w in msg, (w, msg)
    # fields that cannot change the weights are not compared; the way out trains afresh
    same = train(fresh(), data[a].train, _cfg(tmp_path, log_every=5, save_every=2, progress=True), collate_fn=collate)
    assert same.resumed_from_step == same.steps
    fresh_run = train(fresh(), data[b].train, _cfg(tmp_path, resume=False), collate_fn=collate)
    assert fresh_run.resumed_from_step is None and fresh_run.steps == 3
    log = [json.loads(x)["step"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]  # the fresh start dropped the earlier run's lines


def test_a_frozen_base_with_other_weights_is_refused(setup, tmp_path):
    data, (a, _), fresh, collate = setup

    def frozen(seed=0, bump=False):
        model = fresh(seed)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier"))
        if bump:
            with torch.no_grad():
                model.bert.embeddings.word_embeddings.weight[0, 0] += 1e-3
        return model

    train(frozen(), data[a].train, _cfg(tmp_path), collate_fn=collate)
    with pytest.raises(ResumeMismatch, match="frozen base weights differ"):
        train(frozen(bump=True), data[a].train, _cfg(tmp_path), collate_fn=collate)


def test_a_finished_run_is_reported_not_retrained(setup, tmp_path, capsys):
    data, (a, _), fresh, collate = setup
    first = fresh()
    done = train(first, data[a].train, _cfg(tmp_path), collate_fn=collate)
    capsys.readouterr()
    again_model = fresh()
    again = train(again_model, data[a].train, _cfg(tmp_path), collate_fn=collate)
    assert "holds a finished run (3 steps)" in capsys.readouterr().out
    assert again.steps == done.steps == again.resumed_from_step and again.history == []
    ref, got = _state(first), _state(again_model)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["query", "value"],
                                            task_type="TOKEN_CLS"))


def _freeze_most(model):
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("classifier", "bert.encoder.layer.1.output")))
    return model


class _Kill(Exception):
    pass


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_lean_checkpoints_resume_bit_exactly(setup, tmp_path, mode):
    """Killed after a mid-epoch checkpoint and resumed == uninterrupted (dropout on); the
    checkpoint holds only trainable tensors + buffers, no copy of the frozen base."""
    data, (a, _), fresh, collate = setup
    wrap = _lora if mode == "lora" else _freeze_most
    cfg = dict(epochs=2, batch_size=4, save_every=3)
    ref = wrap(fresh())
    train(ref, data[a].train, _cfg(tmp_path, "ref", **cfg), collate_fn=collate)

    def kill(model, step):
        if step == 5:
            raise _Kill()

    with pytest.raises(_Kill):
        train(wrap(fresh()), data[a].train, _cfg(tmp_path, "run", **cfg), collate_fn=collate, post_step=[kill])
    ckpt = checkpoint_dir(tmp_path / "run")
    meta = json.loads((ckpt / "state.json").read_text())
    assert meta["loop"]["step"] == 3 and meta["identity"]["model"]["frozen_tensors"] > 0
    resumed = wrap(fresh())
    result = train(resumed, data[a].train, _cfg(tmp_path, "run", **cfg), collate_fn=collate)
    assert result.resumed_from_step == 3 and result.steps == 12
    ref_state, res_state = _state(ref), _state(resumed)
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)

    from safetensors import safe_open

    with safe_open(str(ckpt / WEIGHTS), "pt") as f:
        saved = set(f.keys())
    frozen = frozen_names(resumed)
    assert saved and not saved & frozen
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in fresh().state_dict().items()}, str(full))
    lean_size = (ckpt / WEIGHTS).stat().st_size + (ckpt / "optimizer.pt").stat().st_size
    assert (ckpt / WEIGHTS).stat().st_size < 0.25 * full.stat().st_size
    assert lean_size < 0.5 * full.stat().st_size  # weights + AdamW state: far below one model copy


@pytest.mark.parametrize("name,damage", [
    (WEIGHTS, "truncate"), ("optimizer.pt", "flip"), ("rng.pt", "truncate"), ("state.json", "garbage"),
    ("manifest.json", "delete")])
def test_corrupt_checkpoint_files_give_one_line_errors_naming_the_file(setup, tmp_path, name, damage):
    data, (a, _), fresh, collate = setup
    train(fresh(), data[a].train, _cfg(tmp_path), collate_fn=collate)
    path = checkpoint_dir(tmp_path / "run") / name
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        path.write_bytes(raw[:-20] + bytes([raw[-20] ^ 0xFF]) + raw[-19:])
    elif damage == "garbage":
        path.write_text('{"loop": {"step": 3,')
    else:
        path.unlink()
    with pytest.raises(CheckpointError) as exc:
        train(fresh(), data[a].train, _cfg(tmp_path), collate_fn=collate)
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg and "--no-resume" in msg
    assert isinstance(exc.value, ValueError)
    train(fresh(), data[a].train, _cfg(tmp_path, resume=False), collate_fn=collate)  # the way out


def test_a_corrupt_best_checkpoint_is_named(setup, tmp_path):
    data, (a, _), fresh, collate = setup
    kw = dict(collate_fn=collate, eval_fn=lambda m: {"f1": 0.5}, metric=("f1", True))
    train(fresh(), data[a].train, _cfg(tmp_path, eval_every=3), **kw)  # best saved at step 3
    best = tmp_path / "run" / "best" / WEIGHTS
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(best)):  # the finished run reloads its best weights
        train(fresh(), data[a].train, _cfg(tmp_path, eval_every=3), **kw)


def test_weights_from_a_gathered_state_load_like_best_weights(setup, tmp_path):
    """What a sharded engine writes for `best/` (a gathered full state) loads with load_weights."""
    from sparseft.train.checkpoint import load_weights, save_weights_from_state

    _, _, fresh, _ = setup
    source, target = fresh(seed=3), fresh()
    save_weights_from_state(source.state_dict(), tmp_path / "best")
    load_weights(target, tmp_path / "best")
    a, b = source.state_dict(), target.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stale_temporaries_of_killed_saves_are_removed_on_start(setup, tmp_path):
    data, (a, _), fresh, collate = setup
    train(fresh(), data[a].train, _cfg(tmp_path), collate_fn=collate)
    ckpts = tmp_path / "run" / "checkpoints"
    leak = ckpts / ".last.0a1b2c3d.tmp"  # what a save killed mid-way leaves (model + optimizer)
    leak.mkdir()
    (leak / WEIGHTS).write_bytes(b"x" * 1000)
    (tmp_path / "run" / ".best.deadbeef.tmp").mkdir()
    foreign = [ckpts / "notes.txt", ckpts / ".last.mine.tmp", tmp_path / "run" / "best.tmp"]
    for p in foreign:
        p.write_text("not sparseft's")
    result = train(fresh(), data[a].train, _cfg(tmp_path), collate_fn=collate)
    assert result.resumed_from_step == 3
    assert not leak.exists() and not (tmp_path / "run" / ".best.deadbeef.tmp").exists()
    assert all(p.read_text() == "not sparseft's" for p in foreign)


def test_cli_second_train_on_other_data_is_a_one_line_error(setup, tiny_bert_dir, toy_ner_files, tmp_path, capsys):
    _, (a, b), _, _ = setup
    dev = toy_ner_files[1]
    out = tmp_path / "cli"

    def run(train_file, *extra):
        return main(["train", "--model", str(tiny_bert_dir), "--train", str(train_file), "--eval", str(dev),
                     "--epochs", "1", "--batch-size", "8", "--output-dir", str(out), "--no-cost",
                     "--set", "progress=false", *extra])

    old_umask = os.umask(0o022)
    try:
        assert run(a) == 0
    finally:
        os.umask(old_umask)
    # every saved file and folder has the umask's modes (not mkstemp's 0600 / mkdtemp's 0700)
    for folder in (out / "model", checkpoint_dir(out / "finetune"), out / "finetune" / "best"):
        if folder.exists():
            assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
            for f in folder.iterdir():
                assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    for f in (out / "report.md", out / "metrics.json", out / "recipe.yaml"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    capsys.readouterr()
    assert run(b) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sparseft train: error")]
    assert len(err) == 1 and "train data file" in err[0] and str(b.resolve()) in err[0]
    assert err[0].endswith("train afresh with --no-resume (resume: false) or use another output folder")
    recipe_text = (out / "recipe.yaml").read_text()  # the refused run left the first run's recipe
    assert str(a.resolve()) in recipe_text and str(b.resolve()) not in recipe_text
    assert run(a) == 0  # identical and finished: said so, the same model is reported again
    assert "holds a finished run" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())["stages"]["finetune"]
    assert metrics["resumed_from_step"] == metrics["steps"] == 3
    assert run(b, "--no-resume") == 0
    metrics = json.loads((out / "metrics.json").read_text())["stages"]["finetune"]
    assert metrics["resumed_from_step"] is None and metrics["steps"] == 3


def test_tied_weights_are_saved_once_and_restored_shared(tmp_path):
    """Full fine-tuning of a model with tied embeddings (as SmolLM2): one copy on disk, and the
    loaded model keeps the tie."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sparseft.train.checkpoint import load_trainable, save_trainable, trainable_state

    cfg = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    a = LlamaForCausalLM(cfg)
    torch.manual_seed(1)
    b = LlamaForCausalLM(cfg)
    assert set(a.state_dict()) - set(trainable_state(a)) == {"lm_head.weight"}
    save_trainable(a, tmp_path / WEIGHTS)
    load_trainable(b, tmp_path / WEIGHTS)
    assert b.lm_head.weight is b.model.embed_tokens.weight
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())

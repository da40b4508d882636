"""The training loop on a tiny BERT: learning, resume equivalence, accumulation, NaN stop, hooks."""

import json

import pytest
import torch

from sparseft.eval.evaluate import evaluate
from sparseft.load.data import DataConfig, build_task_data
from sparseft.load.model import load_model
from sparseft.load.tokenize import PadCollator
from sparseft.train.checkpoint import has_checkpoint
from sparseft.train.config import TrainConfig
from sparseft.train.loop import TrainingDiverged, epoch_batches, train


@pytest.fixture
def setup(tiny_bert_dir, tiny_tokenizer, toy_ner_files):
    train_path, dev_path = toy_ner_files
    data = build_task_data(DataConfig(task="ner", train=str(train_path), eval=str(dev_path)), tiny_tokenizer)

    def fresh():
        torch.manual_seed(0)
        return load_model(str(tiny_bert_dir), "ner", labels=data.labels)

    return data, fresh, PadCollator(tiny_tokenizer.pad_token_id)


def _cfg(tmp_path, name, **kw):
    # fp32 pinned: 'auto' probes each fresh run, and two fresh runs compared bit for bit could pick
    # different precisions on a busy avx512_bf16 machine (the resume case is tested on its own below)
    base = dict(output_dir=str(tmp_path / name), epochs=3, batch_size=4, lr=5e-3, warmup_ratio=0.0,
                progress=False, log_every=1, eval_every="never", mixed_precision="no")
    base.update(kw)
    return TrainConfig(**base)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_reduces_loss_and_logs(setup, tmp_path):
    data, fresh, collate = setup
    model = fresh()
    result = train(model, data.train, _cfg(tmp_path, "a", epochs=4), collate_fn=collate)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert result.steps == 4 * 6
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    lines = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == result.steps and "tokens_per_s" in lines[-1]
    assert has_checkpoint(tmp_path / "a")


class _Kill(Exception):
    pass


@pytest.mark.parametrize("batch_size,save_every,kill_at", [(4, 5, 7), (8, 1, 2), (8, 2, 3)])
def test_killed_run_resumes_to_the_same_weights(setup, tmp_path, batch_size, save_every, kill_at):
    """Uninterrupted vs killed after a mid-epoch checkpoint and resumed: bit-identical (dropout on)."""
    data, fresh, collate = setup
    cfg = dict(batch_size=batch_size, save_every=save_every)
    ref = fresh()
    ref_result = train(ref, data.train, _cfg(tmp_path, "ref", **cfg), collate_fn=collate)

    def kill(model, step):
        if step == kill_at:
            raise _Kill()

    killed = fresh()
    with pytest.raises(_Kill):
        train(killed, data.train, _cfg(tmp_path, "run", **cfg), collate_fn=collate, post_step=[kill])
    resumed = fresh()  # a new process would start from scratch weights, then load the checkpoint
    result = train(resumed, data.train, _cfg(tmp_path, "run", **cfg), collate_fn=collate)
    assert result.steps == ref_result.steps
    ref_state, res_state = _state(ref), _state(resumed)
    for k in ref_state:
        assert torch.equal(ref_state[k], res_state[k]), k
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == result.steps and len(steps) == len(set(steps))


def test_gradient_accumulation_matches_large_batch(tiny_bert_dir, tiny_tokenizer, toy_cls_file, tmp_path):
    """batch 4 x accumulate 2 == batch 8: same examples per step, no dropout, example-mean loss."""
    data = build_task_data(DataConfig(task="cls", train=str(toy_cls_file)), tiny_tokenizer)
    collate = PadCollator(tiny_tokenizer.pad_token_id)

    def fresh():
        torch.manual_seed(0)
        model = load_model(str(tiny_bert_dir), "cls", labels=data.labels)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        return model

    cfg_a = _cfg(tmp_path, "big", epochs=1, batch_size=8, group_by_length=False, lr=1e-3)
    cfg_b = _cfg(tmp_path, "acc", epochs=1, batch_size=4, grad_accum=2, group_by_length=False, lr=1e-3)
    order8 = epoch_batches([1] * len(data.train), cfg_a, 0)
    order4 = epoch_batches([1] * len(data.train), cfg_b, 0)
    assert [i for bt in order8 for i in bt] == [i for bt in order4 for i in bt]
    a, b, start = fresh(), fresh(), _state(fresh())
    train(a, data.train, cfg_a, collate_fn=collate)
    train(b, data.train, cfg_b, collate_fn=collate)
    state_a, state_b = _state(a), _state(b)
    for k, v in state_a.items():
        torch.testing.assert_close(v, state_b[k], atol=2e-4, rtol=0)  # one Adam step moves ~lr=1e-3
    assert not torch.equal(state_a["classifier.weight"], start["classifier.weight"])


def test_nan_loss_stops_with_a_clear_message(setup, tmp_path):
    data, fresh, collate = setup
    nan_loss = lambda model, batch: model(**batch).loss * float("nan")  # noqa: E731
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1.*lower learning rate"):
        train(fresh(), data.train, _cfg(tmp_path, "nan"), collate_fn=collate, loss_fn=nan_loss)


def test_post_step_hooks_run_after_every_optimizer_step(setup, tmp_path):
    data, fresh, collate = setup
    seen = []
    train(fresh(), data.train, _cfg(tmp_path, "hooks", epochs=1, grad_accum=2), collate_fn=collate,
          post_step=[lambda model, step: seen.append(step)])
    assert seen == [1, 2, 3]


def test_best_checkpoint_is_selected_and_restored(setup, tmp_path):
    data, fresh, collate = setup
    model = fresh()
    calls = []

    def eval_fn(m):  # score peaks at the 2nd evaluation
        calls.append(_state(m))
        return {"f1": [0.1, 0.9, 0.5][len(calls) - 1]}

    result = train(model, data.train, _cfg(tmp_path, "best", eval_every="epoch"), collate_fn=collate,
                   eval_fn=eval_fn, metric=("f1", True))
    assert result.best_metric == 0.9 and result.best_step == 12
    final = _state(model)
    for k, v in calls[1].items():
        assert torch.equal(final[k], v), k
    assert any(h.get("best") for h in result.history)


def test_real_evaluation_runs_in_the_loop(setup, tmp_path):
    data, fresh, collate = setup
    model = fresh()
    result = train(model, data.train, _cfg(tmp_path, "ev", epochs=5, eval_every="epoch"), collate_fn=collate,
                   eval_fn=lambda m: evaluate(m, data), metric=("f1", True))
    assert result.best_metric is not None and result.best_metric > 0.5


def test_no_trainable_parameters_is_an_error(setup, tmp_path):
    data, fresh, collate = setup
    model = fresh()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, data.train, _cfg(tmp_path, "frozen"), collate_fn=collate)


def test_a_resumed_auto_run_keeps_its_checkpoints_precision(setup, tmp_path, capsys):
    """mixed_precision 'auto' probes a fresh run; a resumed run must not re-probe (timing noise could
    pick the other precision mid-run): it keeps the precision recorded in its checkpoint."""
    from sparseft.train.checkpoint import read_checkpoint_state

    data, fresh, collate = setup

    def kill(model, step):
        if step == 2:
            raise _Kill()

    cfg = _cfg(tmp_path, "run", batch_size=8, save_every=1, mixed_precision="auto")
    with pytest.raises(_Kill):
        train(fresh(), data.train, cfg, collate_fn=collate, post_step=[kill])
    recorded = read_checkpoint_state(tmp_path / "run")["train_config"]["resolved_mixed_precision"]
    assert recorded in ("no", "bf16")
    capsys.readouterr()
    train(fresh(), data.train, cfg, collate_fn=collate)
    out = capsys.readouterr().out
    assert f"mixed precision auto -> {recorded}: resumed run" in out

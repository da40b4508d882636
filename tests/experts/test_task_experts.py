"""Task experts on one backbone: per-task sparse diffs routed by task id, L = sum_k L_k,
task-balanced sampling, one task's path extracted as a plain model, save -> load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from sparseft.config.base import config_from_dict

from sparseft.experts.multitask import build_task_experts, extract_task
from sparseft.experts.task_config import TaskExpertsConfig
from sparseft.experts.task_data import TaskSampler, task_batch_sizes
from sparseft.experts.task_layer import task_delta_layers
from sparseft.experts.task_train import train_tasks

TASKS = {"pos": ["0", "1"], "topic": ["a", "b", "c"], "intent": ["x", "y", "z", "w"]}


def toy_features(n_labels: int, n: int, seed: int, vocab: int) -> list[dict]:
    """Learnable toy data: the label is which of n_labels token ranges the sentence draws from."""
    gen = torch.Generator().manual_seed(seed)
    span = (vocab - 10) // n_labels
    out = []
    for i in range(n):
        y = i % n_labels
        length = int(torch.randint(4, 10, (1,), generator=gen))
        ids = torch.randint(10 + y * span, 10 + (y + 1) * span, (length,), generator=gen).tolist()
        out.append({"input_ids": [2, *ids, 3], "attention_mask": [1] * (length + 2), "labels": y})
    return out


@pytest.fixture
def cls_model(tiny_bert_dir):
    from sparseft.load.model import load_model

    torch.manual_seed(0)
    return load_model(str(tiny_bert_dir), "cls", labels=["0", "1"])


@pytest.fixture
def collate():
    from sparseft.load.tokenize import PadCollator

    return PadCollator(0)


def data_for(model, sizes=(24, 36, 48)):
    v = model.config.vocab_size
    return {t: toy_features(len(labels), n, i, v) for i, ((t, labels), n) in enumerate(zip(TASKS.items(), sizes))}


def _batch(collate, feats):
    b = collate(feats[:6])
    b.pop("labels")
    return b


def test_training_lowers_every_task_loss_and_extract_equals_multitask(cls_model, collate):
    data = data_for(cls_model)
    cfg = TaskExpertsConfig(density=0.2, steps=60, batch_size=8, lr=5e-2, warmup_ratio=0.0, log_every=5)
    base = {n: p.detach().clone() for n, p in cls_model.named_parameters()}
    mt = build_task_experts(cls_model, TASKS, cfg)
    layers = task_delta_layers(mt.model)
    assert layers and all(set(layer.tasks) == set(TASKS) for layer in layers.values())
    # each task owns its own mask (random masks, seed offset per task)
    one = next(iter(layers.values()))
    assert not torch.equal(one.task_indices("pos"), one.task_indices("topic"))
    result = train_tasks(mt, data, cfg, collate_fn=collate, eval_data=data)
    for t in TASKS:
        assert result["last_losses"][t] < 0.9 * result["first_losses"][t], (t, result["history"])
        assert result["eval"][t] > 1.0 / len(TASKS[t])
    # the shared backbone stayed W0 bit for bit
    for name, w in mt.base_tensors().items():
        assert torch.equal(w, base[name]), name
    mt.eval()
    for t in TASKS:
        served = extract_task(mt, t).eval()
        assert type(served).__name__ == "BertForSequenceClassification"
        assert served.config.num_labels == len(TASKS[t]) and served.config.id2label[0] == TASKS[t][0]
        b = _batch(collate, data[t])
        with torch.no_grad():
            want = mt(t, **b)
            got = served(**b).logits
        assert got.shape == (6, len(TASKS[t]))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # another task's path differs (the extraction really picks the task's diff)
    with torch.no_grad():
        b = _batch(collate, data["pos"])
        other = extract_task(mt, "topic").eval()(**b).logits
    assert other.shape[-1] == 3


def test_forward_activates_only_the_tasks_deltas(cls_model, collate):
    mt = build_task_experts(cls_model, TASKS, TaskExpertsConfig(density=0.05))
    layer = next(iter(task_delta_layers(mt.model).values()))
    with torch.no_grad():
        layer.values["topic"].fill_(float("nan"))       # another task's delta is never read
    b = _batch(collate, data_for(cls_model)["pos"])
    mt.eval()
    assert torch.isfinite(mt("pos", **b)).all()
    assert not torch.isfinite(mt("topic", **b)).all()


def test_batch_sizes_follow_the_sampling_rule():
    sizes = {"a": 100, "b": 400}
    assert task_batch_sizes(sizes, 10, "uniform") == {"a": 10, "b": 10}
    assert task_batch_sizes(sizes, 10, "proportional") == {"a": 4, "b": 16}
    assert task_batch_sizes(sizes, 10, "temperature", 2.0) == {"a": 7, "b": 13}   # sqrt: 10 : 20
    big = task_batch_sizes(sizes, 10, "temperature", 1e6)
    assert big == {"a": 10, "b": 10}
    assert task_batch_sizes({"a": 1, "b": 10_000}, 4, "proportional")["a"] == 1   # at least one example


def test_sampler_proportions_and_passes():
    sizes = {"a": 30, "b": 120}
    bsz = task_batch_sizes(sizes, 10, "proportional")
    sampler = TaskSampler(sizes, bsz, seed=1)
    seen = {"a": [], "b": []}
    for _ in range(30):
        for t, idx in sampler.step().items():
            seen[t] += idx
    assert len(seen["b"]) / len(seen["a"]) == pytest.approx(4.0)
    # every pass is a permutation: the first 30 (a) / 120 (b) indices cover the task once
    assert sorted(seen["a"][:30]) == list(range(30)) and sorted(seen["b"][:120]) == list(range(120))
    again = TaskSampler(sizes, bsz, seed=1)
    assert [again.next("a") for _ in range(3)] == [seen["a"][i:i + 4] for i in (0, 4, 8)]


def test_config_round_trip_and_errors():
    cfg = TaskExpertsConfig(mask="magnitude", density=0.02, sampling="uniform", steps=5, head_lr=1e-3)
    assert TaskExpertsConfig.from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="sampling"):
        TaskExpertsConfig(sampling="random")
    with pytest.raises(ValueError, match="mask"):
        TaskExpertsConfig(mask="nope")
    with pytest.raises(ValueError, match="density"):
        TaskExpertsConfig(density=0)
    # random masks: one seed per task
    assert TaskExpertsConfig(mask_args={"seed": 5}).mask_config(task_index=2).seed == 7


def test_save_load_round_trip(cls_model, collate, tiny_bert_dir, tmp_path):
    from sparseft.export.task_experts import load_task_experts, save_task_experts

    data = data_for(cls_model)
    cfg = TaskExpertsConfig(density=0.05, steps=3, batch_size=4, lr=1e-2)
    mt = build_task_experts(cls_model, TASKS, cfg)
    train_tasks(mt, data, cfg, collate_fn=collate)
    out = save_task_experts(mt, tmp_path / "mt", base_model=str(tiny_bert_dir), config=cfg)
    back = load_task_experts(out)
    assert back.tasks == mt.tasks
    mt.eval(), back.eval()
    for t in TASKS:
        b = _batch(collate, data[t])
        with torch.no_grad():
            assert torch.equal(back(t, **b), mt(t, **b))
    # each task folder is an ordinary sparse diff: sparseft.load gives the extracted path
    import sparseft

    served = sparseft.load(str(out / "tasks" / "topic"), task="cls").eval()
    b = _batch(collate, data["topic"])
    with torch.no_grad():
        torch.testing.assert_close(served(**b).logits, mt("topic", **b), rtol=0, atol=1e-6)
    # a base with other weights (here: its embeddings) is refused
    from sparseft.load.model import load_model

    other = load_model(str(tiny_bert_dir), "cls", labels=["0", "1"])
    with torch.no_grad():
        other.bert.embeddings.word_embeddings.weight.add_(1.0)
    with pytest.raises(ValueError, match="fingerprint"):
        load_task_experts(out, base=other)

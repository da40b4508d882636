"""Every registered mask method through one matrix: exact budgets, allocation, targets,
selection leaves the model untouched, configs round-trip; plus budget arithmetic."""

from __future__ import annotations

import pytest
import torch

from sft_toys import FAST_OPTIONS, MASK_METHODS, collate, ner_data, ner_model, write_ner_files
from sparseft.config.base import config_from_dict
from sparseft.masks.mask import mask_stats
from sparseft.masks.select import lora_count, mask_config, select_masks, target_parameters
from sparseft.registry import REGISTRY


@pytest.fixture(scope="module")
def setup(tiny_bert_dir, tiny_tokenizer, tmp_path_factory):
    train, dev = write_ner_files(tmp_path_factory.mktemp("ner"))
    data = ner_data(tiny_tokenizer, train, dev)
    batches = [collate(tiny_tokenizer)(data.train[i:i + 8]) for i in range(0, 24, 8)]
    return data, batches


def _select(method, setup, tiny_bert_dir, **budget):
    data, batches = setup
    model = ner_model(tiny_bert_dir, data.labels)
    cfg = mask_config(method, **budget, **FAST_OPTIONS[method])
    return model, cfg, select_masks(model, cfg, batches=batches)


def test_every_method_is_in_the_matrix():
    assert sorted(REGISTRY.names("mask")) == sorted(MASK_METHODS)


@pytest.mark.parametrize("method", MASK_METHODS)
@pytest.mark.parametrize("allocation", ["global", "per_tensor"])
def test_density_budget_is_exact(method, allocation, setup, tiny_bert_dir):
    model, cfg, masks = _select(method, setup, tiny_bert_dir, density=0.03, allocation=allocation)
    total = sum(p.numel() for p in target_parameters(model, cfg).values())
    assert mask_stats(masks)["selected"] == round(0.03 * total)
    assert set(masks) == set(target_parameters(model, cfg))
    assert all(m.dtype == torch.bool for m in masks.values())


@pytest.mark.parametrize("method", MASK_METHODS)
def test_count_and_lora_budgets(method, setup, tiny_bert_dir):
    _, _, masks = _select(method, setup, tiny_bert_dir, count=123)
    assert mask_stats(masks)["selected"] == 123
    model, cfg, masks = _select(method, setup, tiny_bert_dir, match_lora_rank=2, allocation="per_tensor")
    params = target_parameters(model, cfg)
    for name, p in params.items():  # per tensor: exactly LoRA's r * (in + out)
        assert int(masks[name].sum()) == lora_count(p.shape, 2) == 2 * (p.shape[0] + p.shape[1])


@pytest.mark.parametrize("method", MASK_METHODS)
def test_selection_leaves_the_model_untouched(method, setup, tiny_bert_dir):
    data, batches = setup
    model = ner_model(tiny_bert_dir, data.labels)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    select_masks(model, mask_config(method, density=0.05, **FAST_OPTIONS[method]), batches=batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", MASK_METHODS)
def test_config_round_trip_and_defaults(method):
    cfg = mask_config(method, count=7, **FAST_OPTIONS[method])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and type(again) is type(cfg)
    default = mask_config(method)
    assert default.density == 0.01 and default.targets == ["Linear"]
    assert "classifier" in default.ignore and "lm_head" in default.ignore


def test_default_targets_skip_the_task_head(setup, tiny_bert_dir):
    model, cfg, masks = _select("magnitude", setup, tiny_bert_dir, density=0.1)
    assert not any(n.startswith("classifier") for n in masks)
    assert any("attention.self.query" in n for n in masks)


def test_data_methods_differ_from_data_free_ones(setup, tiny_bert_dir):
    picks = {m: _select(m, setup, tiny_bert_dir, density=0.05)[2] for m in ("random", "magnitude", "fisher")}
    name = next(iter(picks["fisher"]))
    assert not torch.equal(picks["fisher"][name], picks["magnitude"][name])
    assert not torch.equal(picks["random"][name], picks["magnitude"][name])


@pytest.mark.parametrize("fields, match", [
    ({"density": 0.1, "count": 5}, "at most one budget"),
    ({"density": 0.0}, "density"),
    ({"allocation": "layerwise"}, "allocation"),
    ({"targets": ["re:("]}, "regex"),
])
def test_bad_configs_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        mask_config("magnitude", **fields)


def test_method_specific_validation_and_unknown_names():
    with pytest.raises(ValueError, match="grad_window"):
        mask_config("regrow", every=5, grad_window=6)
    with pytest.raises(ValueError, match="valid choices"):
        mask_config("snip")
    with pytest.raises(ValueError, match="needs training batches"):
        select_masks(torch.nn.Sequential(torch.nn.Linear(4, 4)), mask_config("fisher"))

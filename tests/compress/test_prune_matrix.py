"""Every registered pruning method through one matrix on a tiny Llama: the default config
round-trips through JSON, the pruned model is finite in fp32 and bf16, it really lost weights
(zeros or parameters), and save_pretrained -> plain from_pretrained reproduces its outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

import sparseft.methods  # noqa: F401  registers every method
from sparseft.compress.prune import prune_, sparsity_report
from sparseft.config.base import config_from_dict
from sparseft.eval.cost import count_parameters
from sparseft.registry import REGISTRY

# structured needs a non-default setting to touch heads too; the rest use their defaults
OVERRIDES = {"structured": {"ffn_sparsity": 0.5, "head_sparsity": 0.5}}
METHODS = [m.name for m in REGISTRY.methods("prune")]


def test_matrix_covers_the_known_methods():
    assert set(METHODS) >= {"magnitude", "random", "movement", "nm", "wanda", "sparsegpt", "structured"}


@pytest.mark.parametrize("name", METHODS)
def test_method_matrix(name, llama_lm, lm_batches, tmp_path):
    method = REGISTRY.get("prune", name)
    cfg = method.config_cls(**OVERRIDES.get(name, {}))
    assert config_from_dict(cfg.to_dict()) == cfg
    model = copy.deepcopy(llama_lm)
    before = count_parameters(model)
    prune_(model, cfg, batches=lm_batches)
    after = count_parameters(model)
    assert after["nonzero_params"] < before["nonzero_params"]
    if name != "structured":
        assert sparsity_report(model, ignore=["lm_head"])["sparsity"] >= 0.49
    batch = {"input_ids": lm_batches[0]["input_ids"], "attention_mask": lm_batches[0]["attention_mask"]}
    with torch.no_grad():
        out = model(**batch).logits
        assert torch.isfinite(out).all()
        assert torch.isfinite(copy.deepcopy(model).to(torch.bfloat16)(**batch).logits).all()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, out, atol=1e-5)

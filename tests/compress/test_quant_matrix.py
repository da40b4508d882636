"""Every registered quantization method through one matrix on the tiny Llama (STYLE note 10):
config JSON round trip, pruned zeros stay zero, outputs finite in fp32 and bf16 and close to the
fp32 model, compressed export -> load gives identical logits."""

from __future__ import annotations

import copy

import pytest
import torch

import sparseft.methods  # noqa: F401  (registers every method)
from sparseft.compress.quantize import needs_batches, quantize_
from sparseft.config.base import config_from_dict
from sparseft.export.compressed import export_compressed, load_compressed
from sparseft.registry import REGISTRY

METHODS = [m.name for m in REGISTRY.methods("quantize")]
# known gaps, stated: the compressed format has no entry for these layers yet (none today)
NO_COMPRESSED_EXPORT: dict[str, str] = {}


@pytest.fixture(scope="module")
def pruned_llama(tiny_llama_dir):
    from sparseft.load.model import load_model

    model = load_model(str(tiny_llama_dir), "lm").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and ".layers." in name:
                p.mul_(torch.rand(p.shape, generator=gen) >= 0.3)
    return model


def test_every_method_is_in_the_matrix():
    assert set(METHODS) >= {"rtn", "nf4", "kmeans", "gptq", "dynamic_int8"}


@pytest.mark.parametrize("name", METHODS)
def test_method_matrix(name, pruned_llama, tmp_path):
    method = REGISTRY.get("quantize", name)
    cfg = method.config_cls()
    assert config_from_dict(cfg.to_dict()) == cfg
    model = copy.deepcopy(pruned_llama)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(7, vocab, (2, 16), generator=gen),
                "attention_mask": torch.ones(2, 16, dtype=torch.long)} for _ in range(2)]
    ids = batches[0]["input_ids"]
    zeros = {n: p.detach() == 0 for n, p in model.named_parameters() if p.ndim == 2 and ".layers." in n}
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    quantize_(model, cfg, batches=batches if needs_batches(cfg) else None)
    for weight_name, mask in zeros.items():  # pruned zeros are still exactly zero after decoding
        layer = model.get_submodule(weight_name.removesuffix(".weight"))
        weight = layer.dequantize() if hasattr(layer, "dequantize") else layer.weight  # 'half' keeps nn.Linear
        assert torch.all(weight[mask] == 0), weight_name
    with torch.no_grad():
        out = model(input_ids=ids).logits
        half = copy.deepcopy(model).to(torch.bfloat16)(input_ids=ids).logits
    assert torch.isfinite(out).all() and torch.isfinite(half.float()).all()
    assert (out - ref).abs().max() < 0.5 * ref.abs().max()
    if name in NO_COMPRESSED_EXPORT:
        pytest.skip(f"{name}: {NO_COMPRESSED_EXPORT[name]}")
    export_compressed(model, tmp_path / "c")
    with torch.no_grad():
        # load_compressed builds the model in fp32; a 'half' model's 16-bit values come back exactly
        loaded = load_compressed(tmp_path / "c").to(out.dtype)
        assert torch.equal(loaded(input_ids=ids).logits, out)

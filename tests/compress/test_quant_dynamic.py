"""Dynamic int8 (int8 weights, run-time int8 activations): kernels agree with fp32 within int8
error, on a layer and on a tiny BERT; packed-weight cache follows weight changes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from sparseft.compress.quantize import DynamicInt8Config, DynamicInt8Linear, quantize_
from sparseft.compress.quantize.dynamic import onednn_available
from sparseft.compress.quantize.pack import sqnr_db

BACKENDS = ["int_mm",
            pytest.param("onednn", marks=pytest.mark.skipif(not onednn_available(), reason="no oneDNN int8 linear")),
            pytest.param("fbgemm", marks=[
                pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines, reason="no fbgemm"),
                pytest.mark.filterwarnings("ignore:.*quantized tensor creation.*:UserWarning")])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens", [1, 37])
def test_dynamic_linear_matches_fp32_within_int8_error(backend, tokens):
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(96, 48)
    x = torch.randn(2, tokens, 96, generator=gen)
    q = DynamicInt8Linear.from_linear(lin, backend)
    with torch.no_grad():
        ref, out = lin(x), q(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert sqnr_db(ref, out) > 30  # 8-bit weights and activations: ~35-45 dB on Gaussian data
    # exactness of the integer path: the int_mm result equals float math on the same int8 values
    if backend == "int_mm":
        x2 = x.reshape(-1, 96)
        s = (x2.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-8)
        xq = (x2 / s).round().clamp(-127, 127)
        manual = (xq @ q.weight_int8.float().T) * s * q.weight_scale + q.bias
        assert torch.allclose(out.reshape(-1, 48), manual, atol=1e-4)


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation.*:UserWarning")
@pytest.mark.parametrize("backend", ["auto", "fbgemm"])
def test_packed_weight_cache_follows_weight_changes_and_deepcopy(backend):
    if backend == "fbgemm" and "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("no fbgemm")
    lin = nn.Linear(16, 8)
    q = DynamicInt8Linear.from_linear(lin, backend)
    x = torch.randn(4, 16)
    first = q(x)
    twin = copy.deepcopy(q)
    assert torch.allclose(twin(x), first)
    with torch.no_grad():
        q.weight_int8.mul_(0)
    assert torch.allclose(q(x), q.bias.expand(4, 8), atol=1e-6)  # not the stale packed weight


def test_bf16_inputs_come_back_as_bf16():
    q = DynamicInt8Linear.from_linear(nn.Linear(16, 8), "auto")
    out = q(torch.randn(3, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_bert_logits_and_labels_stay_close(tiny_bert_dir, backend):
    from sparseft.load.model import load_model

    torch.manual_seed(0)
    model = load_model(str(tiny_bert_dir), "ner", labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]).eval()
    ids = torch.randint(7, 100, (4, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        quantize_(model, DynamicInt8Config(backend=backend))
        out = model(input_ids=ids).logits
    n_swapped = sum(isinstance(m, DynamicInt8Linear) for m in model.modules())
    assert n_swapped == 12  # 2 layers x (q, k, v, o, in, out); the classifier stays fp32
    assert type(model.classifier) is nn.Linear
    assert sqnr_db(ref, out) > 20
    assert (ref.argmax(-1) == out.argmax(-1)).float().mean() > 0.9

"""Static int8: calibrated input ranges, saturation outside them, accuracy close to dynamic int8."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from sparseft.compress.quantize import (DynamicInt8Config, StaticInt8Config, StaticInt8Linear, quantize_,
                                        quantized_summary)
from sparseft.compress.quantize.dynamic import onednn_available

BACKENDS = ["int_mm"] + (["onednn"] if onednn_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_matches_fp32_in_range_and_saturates_outside(backend):
    torch.manual_seed(0)
    lin = nn.Linear(48, 24)
    q = StaticInt8Linear.from_linear(lin, -3.0, 3.0, backend=backend)
    x = torch.randn(16, 48).clamp(-3, 3)
    with torch.no_grad():
        ref, out = lin(x), q(x)
        assert 10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()) > 25   # SQNR dB
        wild = x * 10
        assert torch.allclose(q(wild), q(wild.clamp(-5, 5)), atol=1e-5)              # saturates at the grid edge
        assert not torch.allclose(lin(wild), lin(wild.clamp(-5, 5)), atol=1e-2)      # (fp32 would not)
    assert q.input_range.tolist() == [-3.0, 3.0] and q.swap_spec()["backend"] == backend


@pytest.mark.parametrize("observer", ["minmax", "percentile"])
def test_calibrated_model_close_to_fp32_and_dynamic(bert_ner, make_batches, observer):
    batches = make_batches(bert_ner.config.vocab_size, 4)
    ids = make_batches(bert_ner.config.vocab_size, 1, seed=5)[0]
    ids.pop("labels")
    dyn = copy.deepcopy(bert_ner)
    with torch.no_grad():
        ref = bert_ner(**ids).logits
    quantize_(bert_ner, StaticInt8Config(observer=observer), batches=batches)
    quantize_(dyn, DynamicInt8Config(backend="int_mm"))
    layers = [m for m in bert_ner.modules() if isinstance(m, StaticInt8Linear)]
    assert len(layers) == 12 and quantized_summary(bert_ner)["quantized_layers"] == {"static_int8": 12} and all(m.input_range[0] <= 0 <= m.input_range[1] for m in layers)
    with torch.no_grad():
        out, dout = bert_ner(**ids).logits, dyn(**ids).logits
    keep = ids["attention_mask"].bool()
    assert (out.argmax(-1) == ref.argmax(-1))[keep].float().mean() > 0.9
    assert (out - ref).abs().max() < 4 * (dout - ref).abs().max() + 1e-3


def test_percentile_range_is_inside_minmax(bert_ner, make_batches):
    batches = make_batches(bert_ner.config.vocab_size, 2)
    mm, pc = copy.deepcopy(bert_ner), bert_ner
    quantize_(mm, StaticInt8Config(), batches=batches)
    quantize_(pc, StaticInt8Config(observer="percentile", percentile=99.0), batches=batches)
    a = dict((n, m.input_range) for n, m in mm.named_modules() if isinstance(m, StaticInt8Linear))
    b = dict((n, m.input_range) for n, m in pc.named_modules() if isinstance(m, StaticInt8Linear))
    assert all(b[n][0] >= a[n][0] and b[n][1] <= a[n][1] for n in a)


def test_config_errors(bert_ner):
    with pytest.raises(ValueError, match="calibration batches"):
        quantize_(bert_ner, StaticInt8Config())
    with pytest.raises(ValueError, match="observer must be one of"):
        StaticInt8Config(observer="kl")
    with pytest.raises(ValueError, match="percentile"):
        StaticInt8Config(observer="percentile", percentile=20)

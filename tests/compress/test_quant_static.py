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
    quantize_(mm, StaticInt8Config(smooth_alpha=0.0), batches=batches)  # ranges of X itself, comparable
    quantize_(pc, StaticInt8Config(observer="percentile", percentile=99.0, smooth_alpha=0.0), batches=batches)
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


def test_smoothing_moves_an_outlier_channel_into_the_weights():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(200, 64)
    x[:, 5] *= 60                                                            # one outlier channel
    from sparseft.compress.quantize.static import smoothing

    s = smoothing(x.abs().amax(0), lin.weight, 0.5)
    assert s[5] > 4 * s.median()
    plain = StaticInt8Linear.from_linear(lin, float(x.min()), float(x.max()))
    xs = x / s
    smooth = StaticInt8Linear.from_linear(lin, float(xs.min()), float(xs.max()), smooth=s)
    with torch.no_grad():
        ref = lin(x)
        err = [10 * torch.log10(ref.pow(2).mean() / (ref - q(x)).pow(2).mean()) for q in (plain, smooth)]
    assert err[1] > err[0] + 6                                               # dB
    assert (smooth.dequantize() - lin.weight).norm() < 0.05 * lin.weight.norm()   # smoothing undone
    assert smooth.swap_spec()["smooth"] and not plain.swap_spec()["smooth"] and plain.input_smooth is None


def test_per_layer_smoothing_choice_and_alpha_zero(bert_ner, make_batches):
    batches = make_batches(bert_ner.config.vocab_size, 2)
    off = copy.deepcopy(bert_ner)
    quantize_(off, StaticInt8Config(smooth_alpha=0.0), batches=batches)
    assert all(m.input_smooth is None for m in off.modules() if isinstance(m, StaticInt8Linear))
    with torch.no_grad():  # an outlier channel in the input of every FFN output layer
        for layer in bert_ner.bert.encoder.layer:
            layer.intermediate.dense.bias[3] += 30.0
    quantize_(bert_ner, StaticInt8Config(smooth_alpha=0.5), batches=batches)
    smoothed = [n for n, m in bert_ner.named_modules() if isinstance(m, StaticInt8Linear) and m.input_smooth is not None]
    assert any(n.endswith("output.dense") and "attention" not in n for n in smoothed)
    with pytest.raises(ValueError, match="smooth_alpha"):
        StaticInt8Config(smooth_alpha=1.5)

"""Weight-only quantizers (RTN, NF4, k-means) on single layers: error bounds per scheme (SQNR),
codes survive packing, pruned zeros stay exactly zero, configs validate and round-trip."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

from sparseft.compress.quantize import (DynamicInt8Config, GPTQConfig, KMeansConfig, NF4Config, QuantLinear,
                                        RTNConfig, quantize_)
from sparseft.compress.quantize.kmeans import fit_codebook, kmeans_layer
from sparseft.compress.quantize.layers import QuantEmbedding
from sparseft.compress.quantize.pack import quantize_uniform, sqnr_db
from sparseft.config.base import config_from_dict


def gaussian_linear(out=64, inp=256, seed=0) -> nn.Sequential:
    """A Linear with N(0, s_row^2) weights, row scales varying 10x (like trained layers)."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(inp, out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out, inp, generator=gen) * (0.1 + torch.rand(out, 1, generator=gen)))
    return nn.Sequential(layer)


def weight_sqnr(cfg) -> float:
    model = gaussian_linear()
    w = model[0].weight.detach().clone()
    quantize_(model, cfg)
    return sqnr_db(w, model[0].dequantize())


@pytest.mark.parametrize("cfg,low", [
    (RTNConfig(bits=8), 40.0),
    (RTNConfig(bits=8, symmetric=False), 40.0),
    (RTNConfig(bits=8, granularity="tensor"), 30.0),
    (RTNConfig(bits=4, granularity="group", group_size=32), 19.0),
    (RTNConfig(bits=4, symmetric=False, granularity="group", group_size=64), 19.0),
    (RTNConfig(bits=4), 17.0),
    (NF4Config(block_size=64), 20.0),
    (KMeansConfig(levels=16), 20.0),
    (KMeansConfig(levels=16, granularity="tensor"), 18.0),
])
def test_sqnr_thresholds_per_scheme(cfg, low):
    assert weight_sqnr(cfg) > low


def test_finer_groups_and_more_bits_lower_the_error():
    tensor = weight_sqnr(RTNConfig(bits=4, granularity="tensor"))
    channel = weight_sqnr(RTNConfig(bits=4, granularity="channel"))
    group = weight_sqnr(RTNConfig(bits=4, granularity="group", group_size=32))
    assert tensor + 2 < channel < group
    assert weight_sqnr(RTNConfig(bits=8)) > channel + 20  # ~6 dB per bit


def test_kmeans_reaches_the_lloyd_max_optimum_on_gaussian_data():
    v = torch.randn(1, 20000, generator=torch.Generator().manual_seed(0))
    cb, codes = fit_codebook(v, torch.ones_like(v), 16, 200, pin_zero=False)
    mse = float((v - cb.float()[0][codes.long()]).pow(2).mean())
    assert mse < 0.0100  # Lloyd-Max 16-level MSE for N(0, 1) is 0.0095; uniform int4 ~0.0125


def test_activation_weighting_and_outliers_keep_precision_where_it_matters():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 256, generator=gen) * torch.where(torch.arange(256) < 16, 10.0, 0.5)  # loud inputs
    model = gaussian_linear()
    layer = model[0]
    y = x @ layer.weight.detach().T
    plain = kmeans_layer(layer, KMeansConfig(levels=8))
    weighted = kmeans_layer(layer, KMeansConfig(levels=8, importance="activation"), x.pow(2).mean(0))
    assert sqnr_db(y, x @ weighted.dequantize().T) > sqnr_db(y, x @ plain.dequantize().T) + 2.0
    with torch.no_grad():  # heavy tails: a few large weights dominate the error unless kept aside
        layer.weight.copy_(torch.distributions.StudentT(2.0).sample((64, 256)))
    w = layer.weight.detach()
    no_out = sqnr_db(w, kmeans_layer(layer, KMeansConfig()).dequantize())
    with_out = kmeans_layer(layer, KMeansConfig(outlier_fraction=0.01))
    assert sqnr_db(w, with_out.dequantize()) > no_out + 1.0
    assert torch.equal(with_out.dequantize().reshape(-1)[with_out.outlier_index], w.reshape(-1)[with_out.outlier_index])


@pytest.mark.parametrize("cfg", [RTNConfig(bits=4, granularity="group", group_size=16),
                                 RTNConfig(bits=8, symmetric=False), NF4Config(block_size=16),
                                 KMeansConfig(levels=16)])
def test_quantlinear_codes_survive_packing_and_forward_uses_them(cfg):
    model = gaussian_linear(out=24, inp=40)
    x = torch.randn(3, 40)
    quantize_(model, cfg)
    layer = model[0]
    assert isinstance(layer, QuantLinear) and not any(p.requires_grad for p in layer.parameters())
    if isinstance(cfg, RTNConfig):
        ref_codes = quantize_uniform(layer.dequantize(), cfg.bits, cfg.symmetric, cfg.granularity, cfg.group_size)[0]
        assert torch.equal(layer.codes(), ref_codes)  # re-quantizing the decoded weight gives the same codes
    expected = x @ layer.dequantize().T + layer.bias
    assert torch.allclose(model(x), expected, atol=1e-5)


ALL_CONFIGS = [RTNConfig(bits=8), RTNConfig(bits=4, symmetric=False, granularity="group", group_size=16),
               RTNConfig(bits=4, granularity="tensor"), NF4Config(block_size=16), KMeansConfig(),
               KMeansConfig(granularity="tensor", outlier_fraction=0.01), DynamicInt8Config()]


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: type(c).__name__)
def test_quantizing_a_pruned_layer_keeps_zeros_exactly_zero(cfg):
    model = gaussian_linear(out=32, inp=64)
    with torch.no_grad():
        model[0].weight.mul_(torch.rand(32, 64, generator=torch.Generator().manual_seed(3)) > 0.5)
    zeros = model[0].weight.detach() == 0
    quantize_(model, cfg)
    assert torch.all(model[0].dequantize()[zeros] == 0)


@pytest.mark.parametrize("cfg", ALL_CONFIGS + [GPTQConfig()], ids=lambda c: type(c).__name__)
def test_configs_round_trip_through_json(cfg):
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and type(again) is type(cfg)


@pytest.mark.parametrize("cls,field,bad,hint", [
    (RTNConfig, "bits", 5, "bits must be one of"), (RTNConfig, "granularity", "row", "'tensor', 'channel'"),
    (NF4Config, "block_size", 0, "block_size"), (KMeansConfig, "levels", 1, "levels"),
    (KMeansConfig, "importance", "fisher", "'none', 'activation'"), (DynamicInt8Config, "backend", "qnnpack", "int_mm"),
    (GPTQConfig, "damp", 0.0, "damp"), (RTNConfig, "targets", ["re:("], "invalid regex"),
])
def test_bad_config_values_name_the_valid_choices(cls, field, bad, hint):
    with pytest.raises(ValueError, match=hint):
        cls(**{field: bad})


def test_quantize_rejects_non_quantize_configs_and_missing_batches():
    with pytest.raises(TypeError, match="no method is registered"):
        quantize_(gaussian_linear(), object())
    with pytest.raises(ValueError, match="needs calibration batches"):
        quantize_(gaussian_linear(), GPTQConfig())
    with pytest.raises(ValueError, match="needs calibration batches"):
        quantize_(gaussian_linear(), KMeansConfig(importance="activation"))
    with pytest.raises(ValueError, match="select no module"):
        quantize_(gaussian_linear(), RTNConfig(targets=["Conv2d"]))


def test_targets_and_ignore_choose_the_layers():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    quantize_(model, RTNConfig(targets=["Linear"], ignore=["2"]))
    assert isinstance(model[0], QuantLinear) and type(model[2]) is nn.Linear


def test_embedding_quantization_decodes_only_looked_up_rows_and_warns_on_ties():
    emb = nn.Embedding(50, 24, padding_idx=0)
    model = nn.ModuleDict({"emb": emb})
    ids = torch.tensor([[1, 5, 49], [0, 2, 2]])
    quantize_(model, RTNConfig(bits=8, targets=["Embedding"]))
    q = model["emb"]
    assert isinstance(q, QuantEmbedding)
    assert torch.allclose(q(ids), q.dequantize()[ids])
    assert sqnr_db(emb.weight, q.dequantize()) > 40

    tied = nn.ModuleDict({"emb": nn.Embedding(10, 8), "head": nn.Linear(8, 10, bias=False)})
    tied["head"].weight = tied["emb"].weight
    with pytest.warns(RuntimeWarning, match="tied"):
        quantize_(tied, RTNConfig(bits=8, targets=["Embedding"]))


def test_quantized_model_forward_is_finite_in_bf16():
    model = gaussian_linear(out=16, inp=32)
    quantize_(model, NF4Config(block_size=16))
    out = copy.deepcopy(model).to(torch.bfloat16)(torch.randn(2, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_(gaussian_linear(), RTNConfig())  # the normal path warns about nothing

"""Low-rank factorization: exact reconstruction, rank selection, quality margins, robustness."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from sparseft.compress.factorize import (ASVDConfig, FactorizedLinear, FisherSVDConfig, SVDConfig, WhitenedSVDConfig,
                                         factorize_, factorized_summary, merge_factorized_, plan_factorization)
from sparseft.compress.factorize.methods import Weighting, factors, whitening_factor
from sparseft.compress.factorize.ranks import Spectrum, energy_rank, global_ranks, no_gain, plan_params

METHODS = (SVDConfig, ASVDConfig, WhitenedSVDConfig, FisherSVDConfig)


def _logits(model, batches):
    with torch.no_grad():
        return [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in batches]


def _sq_error(a, b) -> float:
    return sum(float(((x - y) ** 2).sum()) for x, y in zip(a, b))


class _Mats(nn.Module):
    """Linear layers with chosen spectra: W = U diag(s) V^T."""

    def __init__(self, spectra: dict[str, tuple[int, int, list[float]]]) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        for name, (out, inp, s) in spectra.items():
            layer = nn.Linear(inp, out, bias=False)
            u, _ = torch.linalg.qr(torch.randn(out, len(s), generator=gen))
            v, _ = torch.linalg.qr(torch.randn(inp, len(s), generator=gen))
            with torch.no_grad():
                layer.weight.copy_(u @ torch.diag(torch.tensor(s)) @ v.T)
            self.add_module(name, layer)


# ---- reconstruction and the layer ----------------------------------------------------------


@pytest.mark.parametrize("cfg_cls", METHODS)
def test_full_rank_factors_reproduce_the_weight(cfg_cls, outlier_llama, lm_batches):
    cfg = cfg_cls(ratio=0.5)
    plan = plan_factorization(outlier_llama, cfg, batches=lm_batches, progress=False)
    for lp in plan.layers:
        layer = outlier_llama.get_submodule(lp.name)
        k = min(layer.in_features, layer.out_features)
        up, down = factors(layer.weight, plan.weightings[lp.name], k)
        assert torch.allclose((up @ down).float(), layer.weight, atol=1e-4, rtol=1e-4), lp.name
        fl = FactorizedLinear.from_factors(up, down, layer.bias, like=layer)
        x = torch.randn(3, layer.in_features)
        assert torch.allclose(fl(x), layer(x), atol=1e-4)


def test_factorized_layer_is_two_plain_linears_and_merges_exactly(bert_ner, ner_batches):
    factorize_(bert_ner, SVDConfig(ratio=0.4), progress=False)
    layers = [m for m in bert_ner.modules() if isinstance(m, FactorizedLinear)]
    assert layers and all(isinstance(m.up, nn.Linear) and isinstance(m.down, nn.Linear) for m in layers)
    before = _logits(bert_ner, ner_batches)
    n = merge_factorized_(bert_ner)
    assert n == len(layers) and not any(isinstance(m, FactorizedLinear) for m in bert_ner.modules())
    assert not hasattr(bert_ner.config, "sparseft_factorization")
    for a, b in zip(before, _logits(bert_ner, ner_batches)):
        assert torch.allclose(a, b, atol=1e-5)


# ---- rank selection ------------------------------------------------------------------------


def test_energy_rank_is_the_smallest_that_reaches_the_threshold():
    s = [4.0, 3.0, 2.0, 1.0]                                # energies 16, 9, 4, 1 (total 30)
    model = _Mats({"a": (40, 30, s)})
    for energy, expected in ((16 / 30, 1), (16 / 30 + 1e-6, 2), (25 / 30, 2), (0.9, 3), (29 / 30, 3), (1.0, 4)):
        assert energy_rank(torch.tensor(s) ** 2, energy) == expected
    plan = plan_factorization(model, SVDConfig(energy=0.9, targets=["a"], ignore=[]), progress=False)
    assert plan.layers[0].rank == 3 and plan.layers[0].kept_energy == pytest.approx(29 / 30)


def test_global_ratio_allocation_is_exact_and_follows_normalised_spectra():
    flat = [1.0] * 16
    peaked = [10.0, 9.0] + [0.01] * 14
    model = _Mats({"flat": (48, 40, flat), "peaked": (48, 40, peaked)})
    cfg = SVDConfig(ratio=0.6, targets=["flat", "peaked"], ignore=[])
    plan = plan_factorization(model, cfg, progress=False)
    ranks = {lp.name: lp.rank for lp in plan.layers}
    budget = int(0.4 * 2 * 48 * 40)
    after = plan.report()["targeted_params_after"]
    assert after <= budget < after + 88                       # nothing more fits: one component = 48 + 40
    assert ranks["peaked"] == 2 and ranks["flat"] > 2           # the peaked layer's energy is in 2 values
    spectra = [Spectrum(n, 48, 40, torch.tensor(s, dtype=torch.float64) ** 2) for n, s in (("f", flat), ("p", peaked))]
    got = global_ranks(spectra, 0.6)
    assert plan_params(spectra, got) == after


def test_uniform_ratio_and_explicit_ranks():
    model = _Mats({"a": (64, 32, [1.0] * 32), "b": (32, 32, [1.0] * 32)})
    plan = plan_factorization(model, SVDConfig(ratio=0.5, allocation="uniform", targets=["a", "b"], ignore=[]),
                              progress=False)
    assert {lp.name: lp.rank for lp in plan.layers} == {"a": 64 * 32 // 2 // 96, "b": 32 * 32 // 2 // 64}
    plan = plan_factorization(model, SVDConfig(ranks={"a": 5}, targets=["a", "b"], ignore=[]), progress=False)
    assert {lp.name: (lp.rank, lp.reason) for lp in plan.layers} == {"a": (5, ""), "b": (None, "not_listed")}
    with pytest.raises(ValueError, match="match no targeted layer"):
        plan_factorization(model, SVDConfig(ranks={"zzz": 5}, targets=["a"], ignore=[]), progress=False)


def test_no_gain_rule_leaves_the_layer_dense_and_says_so():
    assert no_gain(16, 32, 32) and not no_gain(15, 32, 32)   # 16 * 64 == 32 * 32: break-even is no gain
    model = _Mats({"a": (32, 32, [1.0] * 32), "b": (32, 32, [1.0] * 32)})
    plan = plan_factorization(model, SVDConfig(ranks={"a": 16, "b": 15}, targets=["a", "b"], ignore=[]),
                              progress=False)
    report = plan.report()
    assert report["dense_layers"] == {"a": "no_gain"} and report["factorized_layers"] == 1
    factorize_(model, SVDConfig(ranks={"a": 16, "b": 15}, targets=["a", "b"], ignore=[]), progress=False)
    assert isinstance(model.a, nn.Linear) and isinstance(model.b, FactorizedLinear) and model.b.rank == 15


# ---- data-aware methods --------------------------------------------------------------------


def test_whitened_and_activation_aware_beat_plain_svd_on_calibration_outputs(outlier_llama, lm_batches):
    dense = _logits(outlier_llama, lm_batches)
    err = {}
    for cfg_cls in (SVDConfig, ASVDConfig, WhitenedSVDConfig):
        model = copy.deepcopy(outlier_llama)
        factorize_(model, cfg_cls(ratio=0.3, allocation="uniform"), batches=lm_batches, progress=False)
        err[cfg_cls.__name__] = _sq_error(dense, _logits(model, lm_batches))
    # measured on this toy: plain ~471, ASVD ~278, whitened ~73 (uniform ranks, equal parameter counts)
    assert err["WhitenedSVDConfig"] < 0.5 * err["ASVDConfig"] < 0.5 * 0.8 * err["SVDConfig"]


def test_global_allocation_beats_uniform_for_whitened_svd(outlier_llama, lm_batches):
    dense = _logits(outlier_llama, lm_batches)
    err = {}
    for alloc in ("uniform", "global"):
        model = copy.deepcopy(outlier_llama)
        factorize_(model, WhitenedSVDConfig(ratio=0.3, allocation=alloc), batches=lm_batches, progress=False)
        err[alloc] = _sq_error(dense, _logits(model, lm_batches))
    assert err["global"] < err["uniform"]


def test_fisher_weighting_protects_the_rows_that_matter():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(12, 10, generator=gen)
    rows = torch.ones(12)
    rows[0] = 100.0
    plain_up, plain_down = factors(weight, Weighting(), 3)
    up, down = factors(weight, Weighting(rows=rows), 3)
    row_err = lambda u, d: float(((u @ d).float() - weight)[0].norm())  # noqa: E731
    assert row_err(up, down) < 0.1 * row_err(plain_up, plain_down)


def test_fisher_svd_needs_labelled_batches(bert_ner, ner_batches):
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in ner_batches]
    with pytest.raises(ValueError, match="labels"):
        factorize_(bert_ner, FisherSVDConfig(ratio=0.3), batches=unlabelled, progress=False)
    with pytest.raises(ValueError, match="needs calibration batches"):
        factorize_(bert_ner, FisherSVDConfig(ratio=0.3), progress=False)
    factorize_(bert_ner, FisherSVDConfig(ratio=0.3), batches=ner_batches, progress=False)
    assert all(p.grad is None for p in bert_ner.parameters())
    assert all(torch.isfinite(x).all() for x in _logits(bert_ner, ner_batches))


# ---- whitening robustness ------------------------------------------------------------------


def test_singular_gram_matrix_gets_a_diagonal_offset():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, generator=gen, dtype=torch.float64)     # 3 tokens, 16 channels: rank 3
    gram = x.T @ x
    gram[5, :] = gram[:, 5] = 0.0                                  # a dead channel too
    chol, rel = whitening_factor(gram, "layer", damp=1e-6, max_damp=1e-1)
    offset = rel * float(gram.diagonal().mean())
    assert torch.allclose(chol @ chol.T, gram + offset * torch.eye(16, dtype=torch.float64), atol=1e-9)
    # slightly indefinite (rounding in a real X^T X): the offset grows until Cholesky succeeds
    evals, evecs = torch.linalg.eigh(gram)
    bad = evecs @ torch.diag(evals.clamp_min(0) - 1e-3 * float(gram.diagonal().mean())) @ evecs.T
    _, rel = whitening_factor(bad, "layer", damp=1e-6, max_damp=1e-1)
    assert rel >= 1e-3


def test_whitening_failures_name_the_layer():
    with pytest.raises(ValueError, match="layer q_proj: .*not positive definite.*max_damp"):
        whitening_factor(torch.diag(torch.tensor([1.0, 1.0, 1.0, -2.0])), "q_proj", damp=1e-6, max_damp=1e-1)
    with pytest.raises(ValueError, match="layer k: its calibration inputs are all zero"):
        whitening_factor(torch.zeros(4, 4), "k", damp=1e-6, max_damp=1e-1)
    with pytest.raises(ValueError, match="NaN"):
        whitening_factor(torch.full((2, 2), float("nan")), "v", damp=1e-6, max_damp=1e-1)


def test_whitened_svd_with_fewer_tokens_than_channels(llama_lm, make_batches):
    one = make_batches(llama_lm.config.vocab_size, 1, batch=1, seq=4)       # 4 tokens < 32 / 64 channels
    plan = plan_factorization(llama_lm, WhitenedSVDConfig(ratio=0.3), batches=one, progress=False)
    factorize_(llama_lm, WhitenedSVDConfig(ratio=0.3), batches=one, progress=False)
    assert plan.report()["factorized_layers"] > 0
    assert all(torch.isfinite(x).all() for x in _logits(llama_lm, one))


# ---- targets, config, composition ----------------------------------------------------------


def test_targets_and_ignore(bert_ner):
    factorize_(bert_ner, SVDConfig(ratio=0.3, targets=["re:attention"], ignore=["re:output"]), progress=False)
    names = set(factorized_summary(bert_ner)["ranks"])
    assert names and all("attention.self" in n for n in names)
    assert isinstance(bert_ner.classifier, nn.Linear)
    with pytest.raises(ValueError, match="select no module"):
        factorize_(bert_ner, SVDConfig(ratio=0.3, targets=["re:nothing_here"]), progress=False)


def test_tied_weights_are_refused(llama_lm):
    llama_lm.config.tie_word_embeddings = True
    llama_lm.lm_head.weight = llama_lm.model.embed_tokens.weight
    with pytest.raises(ValueError, match="tied"):
        factorize_(llama_lm, SVDConfig(ratio=0.3, targets=["lm_head"], ignore=[]), progress=False)


@pytest.mark.parametrize("fields, match", [
    ({}, "exactly one of ratio, energy or ranks"),
    ({"ratio": 0.3, "energy": 0.9}, "exactly one"),
    ({"ratio": 1.0}, "ratio must be a fraction"),
    ({"energy": 0.0}, "energy must be in"),
    ({"ranks": {"query": 0}}, "integer >= 1"),
    ({"ratio": 0.3, "allocation": "greedy"}, "allocation must be one of"),
    ({"ratio": 0.3, "targets": ["re:("]}, "invalid regex"),
])
def test_config_validation(fields, match):
    with pytest.raises(ValueError, match=match):
        SVDConfig(**fields)


def test_config_round_trip():
    from sparseft.config.base import config_from_dict

    cfg = WhitenedSVDConfig(ratio=0.2, damp=1e-5, ranks={}, ignore=["classifier"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_int8_quantization_of_the_factors(bert_ner, ner_batches):
    from sparseft.compress.quantize import DynamicInt8Config, DynamicInt8Linear, quantize_

    factorize_(bert_ner, WhitenedSVDConfig(ratio=0.3), batches=ner_batches, progress=False)
    before = _logits(bert_ner, ner_batches)
    quantize_(bert_ner, DynamicInt8Config())
    factors_q = [m for m in bert_ner.modules() if isinstance(m, FactorizedLinear)]
    assert factors_q and all(isinstance(m.up, DynamicInt8Linear) and isinstance(m.down, DynamicInt8Linear)
                             for m in factors_q)
    after = _logits(bert_ner, ner_batches)
    rel = _sq_error(before, after) / sum(float((x ** 2).sum()) for x in before)
    assert rel < 1e-2

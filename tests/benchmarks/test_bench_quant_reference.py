"""benchmarks/bench_quant_reference.py: the float64 GPTQ reference agrees with sparseft's GPTQ on a
small layer with correlated inputs, and both beat round-to-nearest there (no model is loaded)."""

from __future__ import annotations

import pytest
import torch

from bench_scripts import load_bench


@pytest.mark.parametrize("symmetric", [True, False])
def test_reference_and_ours_choose_the_same_codes_and_beat_rtn(symmetric):
    bench = load_bench("bench_quant_reference")
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(64, 64, generator=g)
    X = torch.randn(2048, 64, generator=g) @ mix              # correlated inputs: error feedback pays
    H = (X.T @ X).double() / X.shape[0]
    W = torch.randn(24, 64, generator=g) * 0.05
    ours, _, rtn = bench.ours_and_rtn(W, H, symmetric, group_size=32)
    ref = bench.reference_gptq(W, H, bits=4, symmetric=symmetric, group_size=32)
    same = (ours.double() - ref).abs().le(1e-6).double().mean()
    assert same > 0.98, float(same)
    err = {name: bench.relative_error(W, w, H) for name, w in (("ours", ours), ("ref", ref), ("rtn", rtn))}
    assert err["ours"] == pytest.approx(err["ref"], rel=0.02)
    assert err["ours"] < 0.8 * err["rtn"], err


def test_errors_are_grouped_per_layer_type_and_grid():
    bench = load_bench("bench_quant_reference")
    rows = [{"layer": f"{b}.mlp.down_proj", "layer_type": "mlp.down_proj", "grid": "int4 g128 sym",
             "shape": "576x1536", "rtn_error": e, "gptq_error": e / 2, "gptq_over_rtn": 0.5} for b, e in ((0, 0.02), (15, 0.04))]
    (row,) = bench.by_type(rows)
    assert row["layers"] == 2 and row["mean_rtn_error"] == pytest.approx(0.03) and row["mean_gptq_over_rtn"] == 0.5

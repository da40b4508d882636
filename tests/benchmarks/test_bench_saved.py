"""benchmarks/bench_saved.py's bookkeeping (no model is scored): NAME=PATH parsing and the ratios
against the baseline row."""

from __future__ import annotations

import argparse

import pytest

from bench_scripts import load_bench


def test_named_specs_and_ratios_against_the_baseline():
    bench = load_bench("bench_saved")
    assert bench.named("a=runs/x/model") == ("a", "runs/x/model")
    for bad in ("runs/x", "=x", "a="):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=PATH"):
            bench.named(bad)
    rows = bench.with_ratios([
        {"model": "base", "score": 0.9, "throughput_seq_s_b32": 100.0, "latency_ms_b1": 20.0},
        {"model": "small", "score": 0.88, "throughput_seq_s_b32": 250.0, "latency_ms_b1": 8.0},
        {"model": "broken", "error": "exit 1"}])
    small = rows[1]
    assert small["delta_score"] == pytest.approx(-0.02)
    assert small["throughput_speedup_b32"] == pytest.approx(2.5) and small["latency_speedup_b1"] == pytest.approx(2.5)
    assert "delta_score" not in rows[2] and "delta_score" not in rows[0]

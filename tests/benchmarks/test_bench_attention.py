"""benchmarks/bench_attention.py's rows run on tiny shapes (no timing is checked): every row kind
returns its fields, the row list skips fixed windows that cover L, and ratios are filled in."""

from __future__ import annotations

import argparse

from bench_scripts import load_bench


def _bench():
    return load_bench("bench_attention")


def test_kernel_rows_on_tiny_shapes():
    bench = _bench()
    args = argparse.Namespace(shapes=["smollm2"], lengths=[64], repeats=1, smoke=True, flex=False)
    rows = bench.kernel_rows(args)
    names = {(r["row"], r["mode"]) for r in rows}
    assert ("window_128", "fwd") not in names                      # a 128 window covers L = 64
    assert ("window_sqrt_recompute", "fwd_bwd") in names and ("window_sqrt_recompute", "fwd") not in names
    for r in rows:
        assert r["seconds"] > 0 and "error" not in r
        if r["row"] != "dense_sdpa":
            assert r["speedup_vs_sdpa"] > 0
        if r["mode"] == "fwd_bwd":
            assert r["saved_for_backward_mb"] > 0


def test_lm_decode_and_train_rows_in_smoke_mode():
    bench = _bench()
    base = {"model": "smollm2", "smoke": True, "row": "window_16"}
    lm = bench.lm_row({**base, "part": "lm", "context": 64, "eval_windows": 1})
    assert lm["perplexity"] > 1 and lm["tokens_s"] > 0
    dec = bench.decode_row({**base, "part": "decode", "context": 64, "new_tokens": 3})
    assert dec["decode_tokens_s"] > 0
    train = bench.lm_train_row({**base, "part": "lm_train", "train_len": 64, "steps": 2, "lr": 1e-3})
    assert len(train["losses"]) == 2 and train["tokens_s"] > 0

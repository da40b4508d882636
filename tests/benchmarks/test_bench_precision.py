"""benchmarks/bench_precision.py's bookkeeping (no timing): ratios, the issue's targets per hardware
class, and the CPU units in BENCHMARKS.md's header line."""

from __future__ import annotations

from sparseft.utils.hardware import CpuInfo

from bench_scripts import load_bench


def _load(name):
    return load_bench(name)


def _rows():
    return [{"row": "fp32", "f1": 0.911, "throughput_seq_s_b32": 200.0, "latency_ms_b1": 10.0, "size_bytes": 100},
            {"row": "bf16_weights", "f1": 0.910, "throughput_seq_s_b32": 700.0, "latency_ms_b1": 4.0, "size_bytes": 50},
            {"row": "dyn_int8", "f1": 0.907, "throughput_seq_s_b32": 900.0, "latency_ms_b1": 5.0, "size_bytes": 60},
            {"row": "static_int8", "f1": 0.890, "throughput_seq_s_b32": 1200.0, "latency_ms_b1": 4.0, "size_bytes": 60},
            {"row": "torchao_int8", "skipped": "No module named 'torchao'"}]


def test_ratios_and_targets_pick_the_best_int8_within_half_an_f1_point():
    bench = _load("bench_precision")
    rows = _rows()
    bench.finish("minilm", rows)
    by = {r["row"]: r for r in rows}
    assert by["bf16_weights"]["smaller_than_fp32"] == 2.0 and by["dyn_int8"]["throughput_vs_fp32"] == 4.5
    assert abs(by["dyn_int8"]["delta_f1"] + 0.004) < 1e-9
    t = bench.targets("minilm", rows, CpuInfo.from_flags({"avx2", "amx_bf16", "amx_int8"}))
    assert t["hardware class"] == "amx"
    assert t["best int8 at <= 0.5 F1 loss"] == "dyn_int8"        # static_int8 is faster but loses 2.1 points
    assert abs(t["its throughput vs bf16 weights (native bf16 target >= 1.3x)"] - 900 / 700) < 1e-9
    assert t["fastest row overall"] == "static_int8"


def test_default_rows_and_env_line_with_cpu_units():
    bench = _load("bench_precision")
    assert "fp16_weights" in bench.LM_ROWS and "fp16_weights" not in bench.LM_DEFAULT
    assert {"ort_int8", "torch_qdynamic", "bf16_autocast", "static_int8"} <= set(bench.MINILM_ROWS)
    assert "dyn_int8_onednn_tensor" in bench.MINILM_ROWS and "dyn_int8_onednn_tensor" in bench.LM_DEFAULT
    line = _load("summarize")._env_line({"env": {"cpu": "x", "hardware": {"summary": "amx [amx_int8], 2 threads"}}})
    assert "CPU units: amx [amx_int8], 2 threads" in line

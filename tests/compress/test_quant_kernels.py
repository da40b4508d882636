"""The int8 kernel choice: the hardware rule (injected CPUs), the measured choice (injected
timings), the SQNR guard, `DynamicInt8Config.resolve` and the quantize stage's record of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from sparseft.compress.quantize import DynamicInt8Config, DynamicInt8Linear, quantize_
from sparseft.compress.quantize.dynamic import onednn_available
from sparseft.compress.quantize.kernels import candidate_kernels, layer_shapes, measure_kernels
from sparseft.utils.hardware import CpuInfo

AMX = CpuInfo.from_flags({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
AVX2 = CpuInfo.from_flags({"avx2", "fma"})
ARM = CpuInfo.from_flags({"asimd", "asimddp", "bf16", "i8mm"}, arch="aarch64")


def test_candidates_by_hardware_and_build():
    assert candidate_kernels(AMX, onednn=True, fbgemm=True) == ["onednn", "int_mm"]
    assert candidate_kernels(AVX2, onednn=True, fbgemm=True, include_deprecated=True) == ["onednn", "int_mm", "fbgemm"]
    assert candidate_kernels(ARM, onednn=False, fbgemm=False, include_deprecated=True) == ["int_mm"]
    assert candidate_kernels(ARM, onednn=True, fbgemm=True, include_deprecated=True) == ["onednn", "int_mm"]


def _linears():
    torch.manual_seed(0)
    return [(f"l{i}", nn.Linear(32, 64)) for i in range(3)] + [("down", nn.Linear(64, 32))]


def fake_times(fast: str):
    """time_fn: fp32 2 s, the `fast` kernel 0.5 s, any other kernel 1 s."""
    def time_fn(fn, x):
        if isinstance(fn, DynamicInt8Linear):
            return 0.5 if fn.backend == fast else 1.0
        return 2.0
    return time_fn


@pytest.mark.parametrize("fast", ["int_mm", "onednn"])
def test_measured_choice_follows_the_timings(fast):
    if not onednn_available():
        pytest.skip("oneDNN int8 linear not in this torch build")
    out = measure_kernels(_linears(), ["onednn", "int_mm"], time_fn=fake_times(fast))
    assert out["choice"] == fast and out["candidates"][fast]["relative_time"] == pytest.approx(0.25)
    assert sorted(map(tuple, out["shapes"])) == [(32, 64, 3), (64, 32, 1)]
    assert out["fp32_seconds"][64] == pytest.approx(2.0 * 4)               # weighted by layer count
    assert all(r["sqnr_db"] > 25 for r in out["candidates"].values())


def test_sqnr_guard_refuses_inaccurate_kernels():
    with pytest.raises(RuntimeError, match="no int8 kernel reached"):
        measure_kernels(_linears(), ["int_mm"], time_fn=fake_times("int_mm"), min_sqnr_db=500.0)
    assert [n for _, n in layer_shapes(_linears())] == [3, 1]


def test_resolve_measures_once_and_quantize_uses_a_concrete_kernel(bert_ner):
    cfg = DynamicInt8Config()
    resolved, choice = cfg.resolve(bert_ner, hw=AVX2, time_fn=fake_times("int_mm"))
    assert resolved.backend == "int_mm" and choice["hardware_class"] == "avx2" and cfg.backend == "auto"
    assert DynamicInt8Config(backend="int_mm").resolve(bert_ner) == (DynamicInt8Config(backend="int_mm"), None)
    quantize_(bert_ner, DynamicInt8Config())                                  # real (tiny) measurement
    backends = {m.backend for m in bert_ner.modules() if isinstance(m, DynamicInt8Linear)}
    assert len(backends) == 1 and backends <= {"onednn", "int_mm"}


def test_quantize_stage_logs_the_kernel_and_saves_the_resolved_config(tiny_bert_dir, toy_ner_files, tmp_path):
    from sparseft.config.base import load_config
    from sparseft.config.recipe import Recipe
    from sparseft.pipeline import run

    train, dev = toy_ner_files
    recipe = Recipe.from_dict({
        "model": str(tiny_bert_dir), "output_dir": str(tmp_path / "run"),
        "data": {"task": "ner", "train": str(train), "eval": str(dev)},
        "stages": [{"name": "quant", "method": "quantize", "quantizer": "dynamic_int8", "cost": False},
                   {"name": "dev", "method": "eval", "cost": False}]})
    ctx = run(recipe, print_report=False)
    kernel = ctx.state["quant"]["kernel"]
    assert kernel["choice"] in kernel["relative_time"] and "fastest of" in kernel["reason"]
    saved = load_config(tmp_path / "run" / "quant" / "sparseft_quantize.json")
    assert saved.backend == kernel["choice"]

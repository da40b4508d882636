"""The int8 kernel choice: the hardware rule (injected CPUs), the measured choice (injected
timings), the error gate (injected errors, and the real probe on outlier activations),
`DynamicInt8Config.resolve` and the quantize stage's record of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from sparseft.compress.quantize import DynamicInt8Config, DynamicInt8Linear, quantize_
from sparseft.compress.quantize.dynamic import onednn_available, stored_backend
from sparseft.compress.quantize.kernels import (MIN_SQNR_DB, candidate_kernels, layer_shapes, measure_kernels,
                                                passing, probe_errors)
from sparseft.compress.quantize.pack import sqnr_db
from sparseft.utils.hardware import CpuInfo, detect

AMX = CpuInfo.from_flags({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
VNNI = CpuInfo.from_flags({"avx2", "avx512f", "avx512_vnni"})
AVX2 = CpuInfo.from_flags({"avx2", "fma"})
ARM = CpuInfo.from_flags({"asimd", "asimddp", "bf16", "i8mm"}, arch="aarch64")
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="oneDNN int8 linear not in this torch build")


def test_candidates_by_hardware_and_build():
    assert candidate_kernels(AMX, onednn=True, fbgemm=True) == ["onednn", "onednn_tensor", "int_mm"]
    assert candidate_kernels(AVX2, onednn=True, fbgemm=True, include_deprecated=True) == [
        "onednn", "onednn_tensor", "int_mm", "fbgemm"]
    assert candidate_kernels(ARM, onednn=False, fbgemm=False, include_deprecated=True) == ["int_mm"]
    assert candidate_kernels(ARM, onednn=True, fbgemm=True, include_deprecated=True) == [
        "onednn", "onednn_tensor", "int_mm"]


def _linears():
    torch.manual_seed(0)
    return [(f"l{i}", nn.Linear(32, 64)) for i in range(3)] + [("down", nn.Linear(64, 32))]


def fake_times(order: dict[str, float]):
    """time_fn: fp32 2 s, each kernel its `order` seconds (1 s if unlisted)."""
    def time_fn(fn, x):
        if isinstance(fn, DynamicInt8Linear):
            return order.get(fn.backend, 1.0)
        return 2.0
    return time_fn


def fake_errors(candidates, worst: dict[str, float]):
    """probe_errors-shaped result: each kernel's worst-layer SQNR (35 dB if unlisted)."""
    out = {k: {"worst_db": worst.get(k, 35.0), "median_db": 38.0, "worst_layer": "l0"} for k in candidates}
    return {**out, "probe": "injected"}


@needs_onednn
@pytest.mark.parametrize("fast", ["int_mm", "onednn", "onednn_tensor"])
def test_measured_choice_follows_the_timings(fast):
    cands = ["onednn", "onednn_tensor", "int_mm"]
    out = measure_kernels(_linears(), cands, time_fn=fake_times({fast: 0.5}), errors=fake_errors(cands, {}))
    assert out["choice"] == fast and out["candidates"][fast]["relative_time"] == pytest.approx(0.25)
    assert sorted(map(tuple, out["shapes"])) == [(32, 64, 3), (64, 32, 1)]
    assert out["fp32_seconds"][64] == pytest.approx(2.0 * 4)               # weighted by layer count
    assert all(r["passed"] for r in out["candidates"].values()) and "dropped" not in out["reason"]


def test_gate_rule():
    assert passing({"a": 30.0, "b": 24.0}) == ({"a"}, MIN_SQNR_DB)          # 25 dB where reachable
    ok, floor = passing({"a": 18.9, "b": 17.0, "c": 12.8})                   # SmolLM2-like: best - 3 dB
    assert ok == {"a", "b"} and floor == pytest.approx(15.9)
    assert passing({"a": 40.0, "b": 26.0})[0] == {"a", "b"}                  # both fine: speed decides


# the rule per hardware class: (hw, timings, errors) -> expected kernel. A per-tensor kernel that is
# fastest but loses accuracy on the model's activations must not win (the SmolLM2 case).
CASES = [
    (VNNI, {"onednn_tensor": 0.3, "onednn": 0.4, "int_mm": 0.6}, {"onednn_tensor": 14.2, "onednn": 17.9, "int_mm": 17.9},
     "onednn"),
    (VNNI, {"onednn_tensor": 0.3, "onednn": 0.4, "int_mm": 0.6}, {"onednn_tensor": 30.0}, "onednn_tensor"),
    (AMX, {"onednn_tensor": 0.3, "onednn": 0.4, "int_mm": 0.2}, {"int_mm": 10.0}, "onednn_tensor"),
    (AVX2, {"onednn": 0.9, "int_mm": 0.5}, {"onednn_tensor": 12.0}, "int_mm"),
    (ARM, {"onednn": 0.3, "int_mm": 0.5}, {"onednn": 5.0, "onednn_tensor": 5.0}, "int_mm"),
]


@needs_onednn
@pytest.mark.parametrize("hw, times, worst, want", CASES, ids=[f"{c[0].hardware_class}-{c[3]}" for c in CASES])
def test_resolve_rule_per_hardware_class(bert_ner, hw, times, worst, want):
    cands = candidate_kernels(hw, onednn=True, fbgemm=False)
    resolved, choice = DynamicInt8Config().resolve(bert_ner, hw=hw, time_fn=fake_times(times),
                                                   errors=fake_errors(cands, worst))
    assert resolved.backend == want and choice["hardware_class"] == hw.hardware_class
    dropped = {k for k, e in worst.items() if e < choice["gate_db"]}
    assert all(f"{k} " in choice["reason"].split("dropped", 1)[-1] for k in dropped)
    record = resolved.kernel_choice
    assert record["choice"] == want and {k for k, r in record["candidates"].items() if not r["passed"]} == dropped


def test_gaussian_fallback_guard_refuses_nothing_but_records():
    out = measure_kernels(_linears(), ["int_mm"], time_fn=fake_times({}))
    assert out["choice"] == "int_mm" and out["probe"] == "Gaussian inputs" and out["candidates"]["int_mm"]["sqnr_db"] > 25
    assert [n for _, n in layer_shapes(_linears())] == [3, 1]


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = nn.Linear(64, 128), nn.Linear(128, 64)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


@needs_onednn
def test_probe_sees_what_per_tensor_scales_lose():
    """One outlier token (as SmolLM2's first token): per-tensor activations lose ~all other tokens'
    resolution, per-token ones do not; oneDNN per-token equals int_mm (same codes, exact GEMM)."""
    model = _Toy()
    x = torch.randn(1, 48, 64)
    x[0, 0] *= 200
    errs = probe_errors(model, [("up", model.up), ("down", model.down)], ["onednn", "onednn_tensor", "int_mm"],
                        batches=[{"x": x}])
    assert errs["probe"] == "calibration batches"
    assert errs["onednn"]["worst_db"] > 30 > errs["onednn_tensor"]["worst_db"] + 15
    assert errs["onednn"]["worst_db"] == pytest.approx(errs["int_mm"]["worst_db"], abs=0.5)
    assert probe_errors(nn.Sequential(nn.Linear(4, 4)), [("0", nn.Linear(4, 4))], ["int_mm"]) is None  # no vocab


@needs_onednn
def test_onednn_per_token_matches_int_mm_and_does_not_saturate():
    lin = nn.Linear(256, 32)
    x = torch.randn(40, 256)
    x[3] *= 1000
    with torch.no_grad():
        a, b = DynamicInt8Linear.from_linear(lin, "onednn")(x), DynamicInt8Linear.from_linear(lin, "int_mm")(x)
        assert sqnr_db(a, b) > 50
        # worst case for u8 x s8 pair sums (255 * 127 * 2 > int16): exact with VNNI / AMX int32 dot products
        q = DynamicInt8Linear.from_linear(nn.Linear(256, 8, bias=False), "onednn_tensor")
        q.weight_int8.fill_(127)
        q.weight_scale.fill_(1.0)
        ones = torch.ones(2, 256)
        got = q(ones)
    if detect().int8_dot:  # this CPU's int8 dot products accumulate in int32 (VNNI / AMX / ARM dot)
        assert torch.allclose(got, ones @ q.dequantize().T, rtol=1e-3)


def test_stored_backend_keeps_old_onednn_folders_per_tensor():
    assert stored_backend({"backend": "onednn"}) == "onednn_tensor"
    assert stored_backend({"backend": "onednn", "kernel_version": 2}) == "onednn"
    assert stored_backend({"backend": "int_mm"}) == "int_mm"
    if onednn_available():
        spec = DynamicInt8Linear(8, 4, backend="onednn").swap_spec()
        assert DynamicInt8Linear.from_spec(spec).backend == "onednn"


def test_resolve_measures_once_and_quantize_uses_a_concrete_kernel(bert_ner):
    cfg = DynamicInt8Config()
    cands = candidate_kernels(AVX2, onednn=onednn_available(), fbgemm=False)
    resolved, choice = cfg.resolve(bert_ner, hw=AVX2, time_fn=fake_times({"int_mm": 0.5}),
                                   errors=fake_errors(cands, {}))
    assert resolved.backend == "int_mm" and choice["hardware_class"] == "avx2" and cfg.backend == "auto"
    assert DynamicInt8Config(backend="int_mm").resolve(bert_ner) == (DynamicInt8Config(backend="int_mm"), None)
    quantize_(bert_ner, DynamicInt8Config())                                  # real (tiny) measurement and probe
    backends = {m.backend for m in bert_ner.modules() if isinstance(m, DynamicInt8Linear)}
    assert len(backends) == 1 and backends <= {"onednn", "onednn_tensor", "int_mm"}
    record = bert_ner.config.sparseft_int8_kernel
    assert record["choice"] in backends and record["probe"].startswith("random token ids")
    assert bert_ner.config.to_dict()["sparseft_int8_kernel"] == record        # saved in config.json


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
    assert kernel["choice"] in kernel["relative_time"] and "error gate" in kernel["reason"]
    assert "calibration batches" in kernel["reason"] and set(kernel["worst_layer_sqnr_db"]) == set(kernel["relative_time"])
    saved = load_config(tmp_path / "run" / "quant" / "sparseft_quantize.json")
    assert saved.backend == kernel["choice"] and saved.kernel_choice["reason"] == kernel["reason"]


@needs_onednn
def test_format_2_folder_with_onednn_loads_the_per_tensor_kernel_it_was_written_with(bert_ner, tmp_path):
    import json

    from sparseft.export.compressed import export_compressed, load_compressed

    quantize_(bert_ner, DynamicInt8Config(backend="onednn_tensor"))
    export_compressed(bert_ner, tmp_path / "c")
    cfg_file = tmp_path / "c" / "compression_config.json"
    meta = json.loads(cfg_file.read_text())
    for entry in meta["modules"].values():  # what a format-2 writer produced for the same model
        entry["backend"] = "onednn"
        entry.pop("kernel_version")
    cfg_file.write_text(json.dumps({**meta, "format_version": 2}))
    loaded = load_compressed(tmp_path / "c")
    assert {m.backend for m in loaded.modules() if isinstance(m, DynamicInt8Linear)} == {"onednn_tensor"}
    ids = torch.randint(7, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, bert_ner.eval()(input_ids=ids).logits)


def test_probe_falls_back_when_random_ids_cannot_run_the_model():
    class NeedsMore(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"vocab_size": 50, "max_position_embeddings": 16})()
            self.lin = nn.Linear(4, 4)

        def forward(self, input_ids, attention_mask, decoder_input_ids):
            return self.lin(torch.zeros(1, 4))

    model = NeedsMore()
    assert probe_errors(model, [("lin", model.lin)], ["int_mm"]) is None
    with pytest.raises(TypeError):  # given batches that do not fit are the caller's error
        probe_errors(model, [("lin", model.lin)], ["int_mm"], batches=[{"input_ids": torch.ones(1, 3).long()}])

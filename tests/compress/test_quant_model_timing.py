"""Step 4 of the int8 kernel choice: the passing kernels re-timed on the whole model decide
(injected model times, and a real timing run that must leave the model exactly as it was)."""

from __future__ import annotations

import pytest
import torch

from sparseft.compress.quantize import DynamicInt8Config, DynamicInt8Linear
from sparseft.compress.quantize.dynamic import onednn_available
from sparseft.compress.quantize.kernels import candidate_kernels
from sparseft.compress.quantize.layers import target_linears
from sparseft.compress.quantize.model_timing import refine_choice, time_kernels_on_model
from sparseft.utils.hardware import CpuInfo

VNNI = CpuInfo.from_flags({"avx2", "avx512f", "avx512_vnni"})
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="oneDNN int8 linear not in this torch build")


def _layer_times(order):
    def time_fn(fn, x):
        return order.get(fn.backend, 1.0) if isinstance(fn, DynamicInt8Linear) else 2.0
    return time_fn


def _errors(cands, worst):
    return {**{k: {"worst_db": worst.get(k, 35.0), "median_db": 38.0, "worst_layer": "l0"} for k in cands},
            "probe": "injected"}


@needs_onednn
def test_whole_model_times_overrule_the_layer_micro_benchmark(bert_ner):
    cands = candidate_kernels(VNNI, onednn=True, fbgemm=False)
    # layers: int_mm fastest; whole model: onednn fastest; onednn_tensor fails the gate
    resolved, choice = DynamicInt8Config().resolve(
        bert_ner, hw=VNNI, time_fn=_layer_times({"int_mm": 0.5, "onednn": 0.6}),
        errors=_errors(cands, {"onednn_tensor": 10.0}), model_times={"onednn": 0.8, "int_mm": 0.99})
    assert resolved.backend == "onednn" and choice["timing"] == "model"
    assert "whole model" in choice["reason"] and "onednn_tensor" in choice["reason"].split("dropped", 1)[1]
    record = resolved.kernel_choice
    assert record["timing"] == "model" and record["candidates"]["int_mm"]["model_relative_time"] == 0.99
    assert "model_relative_time" not in record["candidates"]["onednn_tensor"]


def test_refine_keeps_the_gate():
    choice = {"choice": "a", "gate_db": 25.0, "probe": "p", "reason": "r",
              "candidates": {"a": {"passed": True, "sqnr_db": 30.0}, "b": {"passed": False, "sqnr_db": 5.0}}}
    out = refine_choice(choice, {"a": 0.9, "b": 0.1})   # b is faster but failed the gate
    assert out["choice"] == "a"
    assert refine_choice(choice, {})["choice"] == "a"


@torch.no_grad()
def test_real_model_timing_leaves_the_model_unchanged(bert_ner):
    bert_ner.eval()
    ids = torch.randint(5, bert_ner.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    before = bert_ner(input_ids=ids).logits.clone()
    modules = dict(bert_ner.named_modules())
    linears = target_linears(bert_ner, ["Linear"], ["classifier"])
    calls = []
    out = time_kernels_on_model(bert_ner, linears, ["int_mm"], shapes=((1, 8), (2, 8)),
                                time_fn=lambda m, x: calls.append(
                                    any(isinstance(mod, DynamicInt8Linear) for mod in m.modules())) or 1.0)
    assert out == {"int_mm": 1.0}
    assert calls == [False, False, True, True]          # fp32 first, then with int8 swapped in
    assert all(modules[n] is m for n, m in bert_ner.named_modules() if n in modules)
    assert not any(isinstance(m, DynamicInt8Linear) for m in bert_ner.modules())
    assert torch.equal(bert_ner(input_ids=ids).logits, before)


@needs_onednn
def test_real_model_timing_runs_every_passing_kernel(bert_ner):
    """No injected timer: the real swap-and-time path (a failing kernel must not be skipped silently)."""
    linears = target_linears(bert_ner, ["Linear"], ["classifier"])
    out = time_kernels_on_model(bert_ner, linears, ["onednn", "int_mm"], shapes=((1, 8), (2, 8)), repeats=1)
    assert set(out) == {"onednn", "int_mm"} and all(v > 0 for v in out.values())
    _, choice = DynamicInt8Config().resolve(bert_ner)
    assert choice["timing"] == "model" and all(
        r.get("model_relative_time") for r in choice["candidates"].values() if r["passed"])


def test_a_winner_slower_than_fp32_is_marked_and_quantize_warns(bert_ner):
    choice = {"choice": "a", "gate_db": 25.0, "probe": "p", "reason": "r",
              "candidates": {"a": {"passed": True, "sqnr_db": 30.0}}}
    slow = refine_choice(choice, {"a": 1.3})
    assert slow["slower_than_fp32"] is True and "SLOWER than fp32" in slow["reason"]
    fast = refine_choice(choice, {"a": 0.8})
    assert fast["slower_than_fp32"] is False and "SLOWER" not in fast["reason"]
    from sparseft.compress.quantize.dynamic import quantize_dynamic_

    cands = candidate_kernels(VNNI, onednn=onednn_available(), fbgemm=False)
    passing = "int_mm"
    cfg, _ = DynamicInt8Config().resolve(bert_ner, hw=VNNI, time_fn=_layer_times({passing: 0.5}),
                                         errors=_errors(cands, {k: 5.0 for k in cands if k != passing}),
                                         model_times={passing: 1.4})
    assert cfg.kernel_choice["slower_than_fp32"] is True
    with pytest.warns(RuntimeWarning, match="slower than fp32 on this model and CPU"):
        quantize_dynamic_(bert_ner, cfg)


def test_generative_models_are_also_timed_at_the_decoding_shape(bert_ner, llama_lm):
    from sparseft.compress.quantize.model_timing import DECODE_SHAPE, MODEL_SHAPES, model_shapes

    assert model_shapes(bert_ner) == MODEL_SHAPES
    assert model_shapes(llama_lm) == MODEL_SHAPES + (DECODE_SHAPE,)
    linears = target_linears(llama_lm, ["Linear"], ["lm_head"])
    seen = []
    time_kernels_on_model(llama_lm, linears, ["int_mm"],
                          time_fn=lambda m, x: seen.append(tuple(x["input_ids"].shape)) or 1.0)
    assert seen[:3] == [(1, 64), (32, 64), (1, 1)]

"""Step 4 of the int8 kernel choice (kernels.py): time the kernels that pass the error gate on the
whole model, at the cost protocol's shapes, and pick the fastest of those.

Why: the layer micro-benchmark (`measure_kernels`) times one Linear of each shape in isolation on
Gaussian inputs. On MiniLM (avx512_vnni class, 2 threads) it timed `int_mm` and per-token
`onednn` equal (0.87x fp32 each), while whole-model throughput at batch 32 x 64 was 0.92-0.99x
fp32 for int_mm and 1.22x for onednn (benchmarks/results/precision_minilm-20261201T124617.json):
the per-call activation quantization, memory traffic between layers and the rest of the model are
not in the micro-benchmark. So where the model can be run on random token ids, each passing
kernel is swapped into every targeted layer in turn, the model is timed (median of `repeats`
calls after a warm-up, batch 1 x 64 and batch 32 x 64 tokens; generative models add batch 1 x 1,
the shape of every decoding step), the original layers are put back, and the kernel with the
lowest mean (kernel time / fp32 time) over the shapes wins. This runs even when one kernel passes:
when the winner is still slower than fp32 (SmolLM2 decoding on a 2-core avx512_vnni CPU: 0.75x
fp32 tokens/s, benchmarks/results/precision_smollm2-20261201T144854.json), the choice says so
(`slower_than_fp32`) and `quantize_dynamic_` warns: int8 then saves memory, not time.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn as nn

MODEL_SHAPES = ((1, 64), (32, 64))   # batch x tokens: latency and throughput shapes of eval/cost.py
DECODE_SHAPE = (1, 1)                # one new token per step (generative models)


def model_shapes(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """The shapes the model is timed at: MODEL_SHAPES, plus DECODE_SHAPE for generative models."""
    can_generate = getattr(model, "can_generate", None)
    generative = bool(can_generate()) if callable(can_generate) else False
    return MODEL_SHAPES + ((DECODE_SHAPE,) if generative else ())


def random_inputs(model: nn.Module, batch: int, tokens: int) -> dict | None:
    """Random token ids for `model` (None when its config has no vocab_size)."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        return None
    tokens = min(tokens, getattr(config, "max_position_embeddings", None) or tokens)
    ids = torch.randint(min(7, vocab - 1), vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _median_seconds(model: nn.Module, inputs: dict, repeats: int) -> float:
    model(**inputs)  # warm-up: weight prepacking, primitive creation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()  # not inference_mode: the int8 layers built here cache packed weights keyed on _version
def time_kernels_on_model(model: nn.Module, linears: list[tuple[str, nn.Linear]], kernels: list[str], *,
                          shapes=None, repeats: int = 3,
                          time_fn: Callable[[nn.Module, dict], float] | None = None) -> dict[str, float] | None:
    """{kernel: mean over `shapes` of (model time with the kernel / fp32 model time)}; the model is
    left exactly as it was. None when the model cannot be run on random token ids."""
    from sparseft.compress.quantize.dynamic import DynamicInt8Linear
    from sparseft.compress.quantize.layers import set_module

    shapes = model_shapes(model) if shapes is None else shapes
    inputs = [random_inputs(model, b, t) for b, t in shapes]
    if any(x is None for x in inputs):
        return None
    time_fn = time_fn or (lambda m, x: _median_seconds(m, x, repeats))
    was_training = model.training
    model.eval()
    try:
        try:
            fp32 = [time_fn(model, x) for x in inputs]
        except (RuntimeError, TypeError, ValueError):  # a model that needs more than token ids
            return None
        out = {}
        for kernel in kernels:  # a kernel that fails here fails loudly (it passed the error probe)
            try:
                for fqn, lin in linears:
                    set_module(model, fqn, DynamicInt8Linear.from_linear(lin, kernel))
                out[kernel] = statistics.mean(time_fn(model, x) / max(f, 1e-12) for x, f in zip(inputs, fp32))
            finally:
                for fqn, lin in linears:
                    set_module(model, fqn, lin)
        return out
    finally:
        model.train(was_training)


def refine_choice(choice: dict, model_times: dict[str, float]) -> dict:
    """The layer-level `choice` (kernels.measure_kernels) re-decided by whole-model times among the
    kernels that passed the error gate; every candidate records its `model_relative_time`."""
    passed = [k for k, r in choice["candidates"].items() if r["passed"] and k in model_times]
    if not passed:
        return choice
    for k, r in choice["candidates"].items():
        r["model_relative_time"] = model_times.get(k)
    best = min(passed, key=model_times.get)
    slower = model_times[best] > 1.0
    others = ", ".join(f"{k} {model_times[k]:.2f}x" for k in passed if k != best)
    reason = (f"fastest on the whole model of the kernels passing the error gate (worst-layer SQNR >= "
              f"{choice['gate_db']:.1f} dB on {choice['probe']}): {model_times[best]:.2f}x fp32 model time, "
              f"worst layer {choice['candidates'][best]['sqnr_db']:.1f} dB"
              + (f"; other passing: {others}" if others else "")
              + (f"; dropped by the gate: {', '.join(k for k, r in choice['candidates'].items() if not r['passed'])}"
                 if any(not r["passed"] for r in choice["candidates"].values()) else "")
              + ("; SLOWER than fp32 on this model and CPU: int8 saves memory here, not time" if slower else ""))
    return {**choice, "choice": best, "reason": reason, "timing": "model", "slower_than_fp32": slower}

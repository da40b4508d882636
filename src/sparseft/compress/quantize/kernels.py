"""Choosing the int8 kernel by hardware and by measurement (`DynamicInt8Config(backend="auto")`).

Two steps:
  1. `candidate_kernels(hw, ...)`: the rule. oneDNN's qlinear where the torch build has it (it
     dispatches to AMX-INT8 tiles, AVX512-VNNI or AVX2 code by itself) and `torch._int_mm`
     (portable). fbgemm (torch.ao quantized tensors, deprecated in torch 2.13) is measured only
     when asked for (`include_deprecated=True`), since the model it builds may stop loading
     in a later torch.
  2. `measure_kernels(model, candidates, ...)`: a micro-benchmark on the model's real Linear
     shapes (one layer of each distinct shape, with its real weights, weighted by how many
     layers have that shape) at 64 tokens (batch 1 x 64) and 2,048 tokens (batch 32 x 64),
     against fp32 `F.linear`. Score = mean over the two token counts of (kernel time / fp32
     time); the lowest score wins among kernels whose output SQNR against fp32 is at least
     `MIN_SQNR_DB` (a kernel that is broken on this build cannot win by being fast). The whole
     measurement takes well under a second for MiniLM or SmolLM2 shapes.

The result is returned (and, through the quantize stage, logged and saved in the resolved
config), never kept in module state: call it again on another machine and it may choose another
kernel. docs/hardware.md gives the choice per hardware class.

    >>> cfg, choice = DynamicInt8Config().resolve(model)   # doctest: +SKIP
    >>> choice["choice"], choice["reason"]                  # doctest: +SKIP
    ('onednn', 'fastest of onednn, int_mm on real shapes: 0.31x fp32 time')
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparseft.compress.quantize.pack import sqnr_db
from sparseft.utils.hardware import CpuInfo

MIN_SQNR_DB = 25.0      # per-tensor 8-bit activations give ~30-40 dB on transformer layers
TOKENS = (64, 2048)     # batch 1 x 64 and batch 32 x 64 tokens: the cost protocol's shapes


def candidate_kernels(hw: CpuInfo, *, onednn: bool, fbgemm: bool, include_deprecated: bool = False) -> list[str]:
    """The int8 kernels worth measuring on `hw`, best guess first (the rule tests cover).

    Args:
        onednn / fbgemm: whether this torch build has the kernel (dynamic.onednn_available(),
            'fbgemm' in torch.backends.quantized.supported_engines).
    """
    out = []
    if onednn:
        out.append("onednn")  # AMX-INT8 / VNNI / AVX2 code paths chosen by oneDNN itself
    out.append("int_mm")
    if include_deprecated and fbgemm and not hw.is_arm and hw.has("avx2"):
        out.append("fbgemm")  # x86 only, needs AVX2
    return out


def _median_seconds(fn: Callable, x: torch.Tensor, repeats: int, timer: Callable[[], float]) -> float:
    with torch.inference_mode():
        fn(x)  # warm-up: prepacking, oneDNN primitive creation
        times = []
        for _ in range(repeats):
            t0 = timer()
            fn(x)
            times.append(timer() - t0)
    return statistics.median(times)


def layer_shapes(linears: list[tuple[str, nn.Linear]]) -> list[tuple[nn.Linear, int]]:
    """One representative Linear per distinct (in, out) shape and how many layers share it."""
    counts = Counter((m.in_features, m.out_features) for _, m in linears)
    first = {}
    for _, m in linears:
        first.setdefault((m.in_features, m.out_features), m)
    return [(first[shape], n) for shape, n in counts.items()]


def measure_kernels(linears: list[tuple[str, nn.Linear]], candidates: list[str], *, tokens=TOKENS,
                    repeats: int = 5, time_fn: Callable[[Callable, torch.Tensor], float] | None = None,
                    min_sqnr_db: float = MIN_SQNR_DB) -> dict:
    """Time each candidate kernel on the layers' shapes; returns the choice and every number.

    Args:
        time_fn: (layer or function, input) -> seconds; default: median of `repeats` calls after a
            warm-up (tests inject their own to exercise the choice).

    Returns:
        {"choice", "reason", "candidates": {kernel: {"relative_time", "sqnr_db", "seconds": {tokens: s}}},
         "fp32_seconds": {tokens: s}, "shapes": [[in, out, count], ...]}
    """
    from sparseft.compress.quantize.dynamic import DynamicInt8Linear

    time_fn = time_fn or (lambda fn, x: _median_seconds(fn, x, repeats, time.perf_counter))
    reps = layer_shapes(linears)
    gen = torch.Generator().manual_seed(0)
    inputs = {t: [torch.randn(t, lin.in_features, generator=gen) for lin, _ in reps] for t in tokens}
    fp32 = {t: sum(n * time_fn(lambda x, lin=lin: F.linear(x, lin.weight.float(), lin.bias), x)
                   for (lin, n), x in zip(reps, inputs[t])) for t in tokens}
    results: dict[str, dict] = {}
    for kernel in candidates:
        layers = [DynamicInt8Linear.from_linear(lin, kernel) for lin, _ in reps]
        seconds = {t: sum(n * time_fn(q, x) for q, (_, n), x in zip(layers, reps, inputs[t])) for t in tokens}
        with torch.inference_mode():
            err = min(sqnr_db(F.linear(x, lin.weight.float(), lin.bias), q(x))
                      for q, (lin, _), x in zip(layers, reps, inputs[tokens[-1]]))
        rel = statistics.mean(seconds[t] / max(fp32[t], 1e-12) for t in tokens)
        results[kernel] = {"relative_time": rel, "sqnr_db": err, "seconds": seconds}
    ok = {k: r for k, r in results.items() if r["sqnr_db"] >= min_sqnr_db}
    if not ok:
        raise RuntimeError(f"no int8 kernel reached {min_sqnr_db} dB SQNR on this machine: "
                           f"{ {k: round(r['sqnr_db'], 1) for k, r in results.items()} }")
    choice = min(ok, key=lambda k: ok[k]["relative_time"])
    dropped = sorted(set(results) - set(ok))
    reason = (f"fastest of {', '.join(candidates)} on the model's shapes: {ok[choice]['relative_time']:.2f}x fp32 time"
              + (f" ({', '.join(dropped)} below {min_sqnr_db} dB)" if dropped else ""))
    return {"choice": choice, "reason": reason, "candidates": results, "fp32_seconds": fp32,
            "shapes": [[lin.in_features, lin.out_features, n] for lin, n in reps]}

"""Choosing the int8 kernel by hardware, by measurement and by error (`DynamicInt8Config(backend="auto")`).

Three steps:
  1. `candidate_kernels(hw, ...)`: the rule. oneDNN's qlinear where the torch build has it (it
     dispatches to AMX-INT8 tiles, AVX512-VNNI or AVX2 code by itself) with per-token
     activations ("onednn") and per-tensor ones ("onednn_tensor"), and `torch._int_mm`
     (portable, per token). fbgemm (torch.ao quantized tensors, deprecated in torch 2.13) is
     measured only when asked for (`include_deprecated=True`).
  2. `probe_errors(model, ...)`: the quality probe. One forward pass of the fp32 model on a probe
     batch (calibration batches when given, else random token ids) with a pre-hook on every
     targeted Linear: each layer's real input goes through fp32 and through every candidate
     kernel, and the output SQNR (dB, per token, averaged over tokens: `token_sqnr_db`) is kept
     per layer. Real activations matter: transformer layers have outlier channels and tokens
     (SmolLM2's last down_proj sees one token at 473 against a median of 39) that Gaussian test
     inputs do not have, and a per-tensor activation scale spreads such an outlier's range over
     every token of the call (SmolLM2: worst layer 0.6 dB per-tensor, 18 dB per-token; MiniLM:
     14.5 vs 24.5 dB).
  3. `measure_kernels(linears, candidates, errors=...)`: a micro-benchmark on the model's real
     Linear shapes (one layer of each distinct shape, with its real weights, weighted by how
     many layers have that shape) at 64 tokens (batch 1 x 64) and 2,048 tokens (batch 32 x 64),
     against fp32 `F.linear`. Score = mean over the two token counts of (kernel time / fp32
     time). The error gate (`passing`) keeps a kernel whose worst-layer SQNR is at least
     min(MIN_SQNR_DB, best - MAX_GAP_DB), best being the most accurate candidate's worst layer:
     25 dB on every layer where some kernel reaches it, else within 3 dB of the most accurate
     kernel. The fastest kernel that passes wins. Without a probe (no model forward) the error
     is measured on Gaussian inputs, which only catches broken kernels.
  4. `model_timing.time_kernels_on_model`: where the model runs on random token ids, the passing
     kernels are timed on the whole model (batch 1 x 64 and 32 x 64, plus 1 x 1 for generative
     models) and the fastest there wins: the layer micro-benchmark does not predict whole-model
     speed well enough (MiniLM: int_mm and onednn equal in it, 0.99x vs 1.22x fp32 whole-model).
     A winner slower than fp32 is marked (`slower_than_fp32`) and quantize_dynamic_ warns.

The result is returned (and, through the quantize stage, logged and saved in the resolved
config and config.json), never kept in module state: call it again on another machine and it
may choose another kernel. docs/hardware.md gives the choice per hardware class.

    >>> cfg, choice = DynamicInt8Config().resolve(model)   # doctest: +SKIP
    >>> choice["choice"], choice["reason"]                  # doctest: +SKIP
    ('onednn', 'fastest of the kernels passing the error gate (...): 0.62x fp32 time, worst layer 27.1 dB; ...')
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparseft.utils.hardware import CpuInfo

MIN_SQNR_DB = 25.0      # worst layer, per-token metric: int8 per-token 18 (SmolLM2) / 24.5 dB (MiniLM)
MAX_GAP_DB = 3.0        # where no kernel reaches MIN_SQNR_DB: keep those within 3 dB of the best
MAX_DB = 200.0          # exact outputs (zero noise) are recorded as 200 dB, not inf
PROBE_SHAPE = (2, 64)   # random token ids when no probe batches are given
TOKENS = (64, 2048)     # batch 1 x 64 and batch 32 x 64 tokens: the cost protocol's shapes


def candidate_kernels(hw: CpuInfo, *, onednn: bool, fbgemm: bool, include_deprecated: bool = False) -> list[str]:
    """The int8 kernels worth measuring on `hw`, best guess first (the rule tests cover).

    Args:
        onednn / fbgemm: whether this torch build has the kernel (dynamic.onednn_available(),
            'fbgemm' in torch.backends.quantized.supported_engines).
    """
    out = []
    if onednn:
        out += ["onednn", "onednn_tensor"]  # AMX-INT8 / VNNI / AVX2 code paths chosen by oneDNN itself
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


def _probe_batches(model: nn.Module, batches) -> list[dict] | None:
    if batches:
        return [{k: v for k, v in b.items() if k != "labels"} for b in list(batches)[:2]]
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        return None
    shape = (PROBE_SHAPE[0], min(PROBE_SHAPE[1], getattr(config, "max_position_embeddings", None) or PROBE_SHAPE[1]))
    ids = torch.randint(min(7, vocab - 1), vocab, shape, generator=torch.Generator().manual_seed(0))
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]


def token_sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Mean over tokens (rows) of each token's output SQNR in dB, capped at MAX_DB.

    Per token, not over the whole tensor: one large token dominates a whole-tensor SQNR, so
    the error a per-tensor scale puts on every other token would not show (and layer norms and
    attention see each token at its own scale)."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum(-1)
    signal = ref.pow(2).sum(-1)
    db = 10 * torch.log10(signal.clamp_min(1e-30) / noise.clamp_min(1e-30))
    db = torch.where(noise > 0, db, torch.full_like(db, MAX_DB))             # exact rows (zero rows too)
    return float(db.clamp(-MAX_DB, MAX_DB).mean())


@torch.no_grad()
def probe_errors(model: nn.Module, linears: list[tuple[str, nn.Linear]], candidates: list[str], *,
                 batches=None) -> dict | None:
    """Per-kernel output error against fp32 on each targeted layer's real input (see module doc):
    `token_sqnr_db` per layer (the lowest over probe batches), then the worst and median layer.

    Returns {kernel: {"worst_db", "median_db", "worst_layer"}, "probe": what was fed} or None when
    the model cannot be run on a probe (no batches, and no config.vocab_size or random token ids
    are not enough input for its forward).
    """
    from sparseft.compress.quantize.dynamic import DynamicInt8Linear

    probe = _probe_batches(model, batches)
    if probe is None:
        return None
    per_layer: dict[str, dict[str, float]] = {k: {} for k in candidates}

    def hook(fqn: str, lin: nn.Linear):
        def fn(module, args):
            x = args[0].detach().float().reshape(-1, lin.in_features)
            ref = F.linear(x, lin.weight.float(), None if lin.bias is None else lin.bias.float())
            for kernel in candidates:
                err = token_sqnr_db(ref, DynamicInt8Linear.from_linear(lin, kernel)(x))
                per_layer[kernel][fqn] = min(err, per_layer[kernel].get(fqn, float("inf")))
        return fn

    handles = [lin.register_forward_pre_hook(hook(fqn, lin)) for fqn, lin in linears]
    device = next(model.parameters()).device
    try:
        for batch in probe:
            model(**{k: v.to(device) for k, v in batch.items()})
    except (TypeError, ValueError):
        if batches:
            raise
        return None  # the model needs other inputs (e.g. an encoder-decoder): Gaussian fallback
    finally:
        for h in handles:
            h.remove()
    out: dict = {"probe": "calibration batches" if batches else f"random token ids {list(PROBE_SHAPE)}"}
    for kernel, errs in per_layer.items():
        if not errs:
            return None  # no targeted layer ran (e.g. only unused layers targeted): Gaussian fallback
        worst = min(errs, key=errs.get)
        out[kernel] = {"worst_db": errs[worst], "median_db": statistics.median(errs.values()), "worst_layer": worst}
    return out


def passing(errors: dict[str, float], *, min_sqnr_db: float = MIN_SQNR_DB, max_gap_db: float = MAX_GAP_DB
            ) -> tuple[set[str], float]:
    """The error gate: kernels whose worst-layer SQNR reaches min(min_sqnr_db, best - max_gap_db)."""
    floor = min(min_sqnr_db, max(errors.values()) - max_gap_db)
    return {k for k, e in errors.items() if e >= floor}, floor


def measure_kernels(linears: list[tuple[str, nn.Linear]], candidates: list[str], *, tokens=TOKENS,
                    repeats: int = 5, time_fn: Callable[[Callable, torch.Tensor], float] | None = None,
                    errors: dict | None = None, min_sqnr_db: float = MIN_SQNR_DB,
                    max_gap_db: float = MAX_GAP_DB) -> dict:
    """Time each candidate kernel on the layers' shapes, gate by error; returns the choice and every number.

    Args:
        time_fn: (layer or function, input) -> seconds; default: median of `repeats` calls after a
            warm-up (tests inject their own to exercise the choice).
        errors: `probe_errors(...)` output ({kernel: {"worst_db", ...}, "probe": ...}); None: the
            error is measured on the Gaussian timing inputs.

    Returns:
        {"choice", "reason", "gate_db", "probe", "candidates": {kernel: {"relative_time", "sqnr_db",
         "median_sqnr_db", "worst_layer", "passed", "seconds": {tokens: s}}}, "fp32_seconds", "shapes"}
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
        if errors is not None:
            err = dict(errors[kernel])
        else:
            with torch.inference_mode():
                worst = min(token_sqnr_db(F.linear(x, lin.weight.float(), lin.bias), q(x))
                            for q, (lin, _), x in zip(layers, reps, inputs[tokens[-1]]))
            err = {"worst_db": min(worst, MAX_DB), "median_db": min(worst, MAX_DB), "worst_layer": None}
        rel = statistics.mean(seconds[t] / max(fp32[t], 1e-12) for t in tokens)
        results[kernel] = {"relative_time": rel, "sqnr_db": err["worst_db"], "median_sqnr_db": err["median_db"],
                           "worst_layer": err["worst_layer"], "seconds": seconds}
    ok, floor = passing({k: r["sqnr_db"] for k, r in results.items()}, min_sqnr_db=min_sqnr_db,
                        max_gap_db=max_gap_db)
    for k, r in results.items():
        r["passed"] = k in ok
    choice = min(ok, key=lambda k: results[k]["relative_time"])
    probe = errors.get("probe") if errors is not None else "Gaussian inputs"
    dropped = [f"{k} {results[k]['relative_time']:.2f}x, {results[k]['sqnr_db']:.1f} dB" for k in candidates if k not in ok]
    reason = (f"fastest of the kernels passing the error gate (worst-layer SQNR >= {floor:.1f} dB on {probe}): "
              f"{results[choice]['relative_time']:.2f}x fp32 time, worst layer {results[choice]['sqnr_db']:.1f} dB"
              + (f"; dropped {'; '.join(dropped)}" if dropped else ""))
    return {"choice": choice, "reason": reason, "gate_db": floor, "probe": probe, "candidates": results,
            "fp32_seconds": fp32, "shapes": [[lin.in_features, lin.out_features, n] for lin, n in reps]}


def choice_summary(choice: dict) -> dict:
    """The JSON-able record of a choice kept in the resolved config and config.json."""
    return {"choice": choice["choice"], "reason": choice["reason"], "hardware_class": choice.get("hardware_class"),
            "gate_db": round(choice["gate_db"], 2), "probe": choice["probe"],
            "candidates": {k: {"relative_time": round(r["relative_time"], 3), "worst_layer_sqnr_db": round(r["sqnr_db"], 2),
                               "median_sqnr_db": round(r["median_sqnr_db"], 2), "passed": r["passed"],
                               **({"model_relative_time": round(r["model_relative_time"], 3)}
                                  if r.get("model_relative_time") is not None else {})}
                           for k, r in choice["candidates"].items()},
            "timing": choice.get("timing", "layers"),
            **({"slower_than_fp32": choice["slower_than_fp32"]} if "slower_than_fp32" in choice else {})}

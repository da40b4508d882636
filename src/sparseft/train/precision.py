"""`mixed_precision: auto`: which training precision to use on this machine, and why.

The rule (`choose_precision`), tested with injected hardware in tests/train/test_precision.py:

  * explicit 'no' / 'bf16' / 'fp16' are kept (fp16 needs a GPU);
  * GPU: bf16 where the GPU supports it, else fp32;
  * CPU without native bf16 (no AVX512-BF16, AMX-BF16 or ARM BF16; see utils/hardware.py):
    fp32. torch then emulates bf16 through fp32 conversions, which was ~20x slower on an
    AVX2-only CPU, so nothing is measured;
  * CPU with native bf16: a short probe times one training step (forward + backward on the
    first batch, no optimizer step) in fp32 and under bf16 autocast, and bf16 is chosen only
    if it is at least `MIN_SPEEDUP` faster (on an AMX Xeon it was 1.45x on MiniLM). Under
    several processes the probe is skipped (ranks could measure differently and disagree) and
    native bf16 is used.

The decision and its reason are one printed line (`PrecisionChoice.line()`), e.g.
"mixed precision auto -> no: CPU class avx512_vnni has no native bf16 (fp32 is faster)".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from sparseft.utils.hardware import CpuInfo, detect

MIN_SPEEDUP = 1.1   # bf16 must beat fp32 by 10% in the probe (timing noise on a busy machine is ~5%)
Probe = Callable[[str], float]  # precision ('no' | 'bf16') -> seconds of one training step


@dataclass(frozen=True)
class PrecisionChoice:
    """Accelerate's mixed_precision value plus why it was chosen (and the probe's timings)."""

    precision: str
    reason: str
    requested: str = "auto"
    timings: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"mixed precision {self.requested} -> {self.precision}: {self.reason}"

    def log(self) -> None:
        """Print `line()` once per job (on the main process)."""
        if os.environ.get("RANK", "0") == "0":
            print(self.line(), flush=True)

    def to_dict(self) -> dict:
        return {"mixed_precision": self.precision, "requested": self.requested, "reason": self.reason,
                **({"probe_seconds": self.timings} if self.timings else {})}


def choose_precision(requested: str, *, hw: CpuInfo | None = None, cuda: bool | None = None,
                     cuda_bf16: bool | None = None, probe: Probe | None = None, world_size: int | None = None,
                     min_speedup: float = MIN_SPEEDUP) -> PrecisionChoice:
    """Resolve `requested` ('auto', 'no', 'bf16', 'fp16') for this machine.

    Args:
        hw: the CPU (default: `detect()`); cuda / cuda_bf16: GPU presence and bf16 support
            (default: asked from torch); world_size: processes (default: $WORLD_SIZE or 1).
        probe: precision -> seconds per training step; only called on CPUs with native bf16.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if requested == "fp16" and not cuda:
        raise ValueError("mixed_precision='fp16' needs a GPU; use 'no' (or 'bf16' on CPUs with bf16 units)")
    if requested != "auto":
        return PrecisionChoice(requested, "as configured", requested)
    if cuda:
        ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return PrecisionChoice("bf16" if ok else "no", "GPU supports bf16" if ok else "GPU has no bf16")
    hw = hw or detect()
    if not hw.native_bf16:
        return PrecisionChoice("no", f"CPU class {hw.hardware_class} has no native bf16 (fp32 is faster)")
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if world_size > 1 or probe is None:
        why = "several processes, not probed" if world_size > 1 else "not probed"
        return PrecisionChoice("bf16", f"CPU class {hw.hardware_class} computes bf16 natively ({why})")
    t32, t16 = probe("no"), probe("bf16")
    speedup = t32 / max(t16, 1e-12)
    timings = {"fp32": round(t32, 4), "bf16": round(t16, 4)}
    if speedup >= min_speedup:
        return PrecisionChoice("bf16", f"CPU class {hw.hardware_class}: bf16 step {speedup:.2f}x faster than fp32",
                               timings=timings)
    return PrecisionChoice("no", f"CPU class {hw.hardware_class}: bf16 step only {speedup:.2f}x fp32's "
                                 f"(< {min_speedup}x)", timings=timings)


def step_probe(model: torch.nn.Module, batch: dict, loss_fn, *, repeats: int = 2) -> Probe:
    """A probe timing forward + backward of `loss_fn(model, batch)` (best of `repeats`, after a warm-up).

    The probe takes no optimizer step, clears the gradients it made and restores the RNG state,
    so training afterwards is the same as without it.
    """
    def run(precision: str) -> float:
        was_training = model.training
        rng = torch.random.get_rng_state()
        model.train()
        best = float("inf")
        try:
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = loss_fn(model, batch)
                loss.float().backward()
                if i:  # the first call warms up (allocations, oneDNN primitive creation)
                    best = min(best, time.perf_counter() - t0)
        finally:
            for p in model.parameters():
                p.grad = None
            torch.random.set_rng_state(rng)
            model.train(was_training)
        return best

    return run

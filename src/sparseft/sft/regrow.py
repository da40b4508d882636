"""Drop/regrow during training (`regrow` mask): a `post_step` hook for the training loop.

Schedule, with E = `every` and G = `grad_window` (steps are optimizer steps, 1-based):
  * during the G steps before each multiple of E, every SparseDelta layer accumulates its dense
    weight gradient into `acc_grad` (fp32, O(N) per targeted weight, freed after the update);
  * at each multiple of E, per tensor: drop the round(drop_fraction * k) slots with the smallest
    |delta| (the delta is discarded: that entry is back at W0) and re-point those slots at the
    positions with the largest |accumulated gradient| among positions that were not tuned.
    Slot count per tensor is constant, so the budget stays exact and `values` keeps its shape.

Optimizer state of regrown entries is reset: AdamW's `exp_avg` / `exp_avg_sq` (and
`max_exp_avg_sq` for amsgrad) are zeroed at the replaced slots, and the new deltas start at 0,
as a freshly added parameter would. AdamW's bias-correction step counter is per parameter, not
per entry, so it is not reset (RigL and SpIEL do the same). The training loop does not hand
its optimizer to hooks; `track_optimizer(params)` finds it: a step-post hook registered with
`torch.optim.optimizer.register_optimizer_step_post_hook` for the duration of the training call
only, recording the optimizer whose param groups hold our value vectors.

Multi-process: accumulated gradients are summed over processes (all_reduce) before choosing,
and |delta| is identical on every process (DDP keeps values in sync), so all processes make the
same choice. On resume in the middle of a gradient window, the first update after resuming uses
the part of the window that was seen after the restart.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from sparseft.masks.regrow import RegrowMaskConfig
from sparseft.sft.layer import SparseDelta

_ADAM_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def reset_adam_state_(optimizer: torch.optim.Optimizer, values: torch.nn.Parameter, slots: torch.Tensor) -> None:
    """Zero AdamW's per-entry moments of `values` at `slots` (regrown entries start fresh). Entries
    without state (before the first step) have nothing to reset."""
    state = optimizer.state.get(values, {})
    for key in _ADAM_STATE_KEYS:
        t = state.get(key)
        if isinstance(t, torch.Tensor) and t.shape == values.shape:
            t[slots] = 0


@dataclass
class OptimizerRef:
    """Filled with the optimizer that steps the given parameters, once it has stepped."""

    optimizer: torch.optim.Optimizer | None = None


@contextmanager
def track_optimizer(params: Iterable[torch.Tensor]) -> Iterator[OptimizerRef]:
    """Within the block, record the first optimizer that steps any of `params`."""
    ids = {id(p) for p in params}
    ref = OptimizerRef()

    def hook(optimizer, args, kwargs) -> None:
        if ref.optimizer is None and any(id(p) in ids for g in optimizer.param_groups for p in g["params"]):
            ref.optimizer = optimizer

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield ref
    finally:
        handle.remove()


@dataclass
class RegrowHook:
    """`post_step(model, step)` that drops and regrows entries every `cfg.every` steps.

    Args:
        layers: {weight fqn: SparseDelta} from `sparsify_`.
        cfg: the RegrowMaskConfig (every, drop_fraction, grad_window).
        optimizer_ref: where to find the optimizer whose state is reset (see `track_optimizer`).
        stop_at: no update at or after this step (an update at the last step would only discard
            deltas and leave untrained entries in the diff); None: never stop.
    """

    layers: dict[str, SparseDelta]
    cfg: RegrowMaskConfig
    optimizer_ref: OptimizerRef = field(default_factory=OptimizerRef)
    stop_at: int | None = None
    history: list[dict] = field(default_factory=list)
    _warned: bool = False

    def __post_init__(self) -> None:
        self._set_window(0)

    def __call__(self, model: torch.nn.Module, step: int) -> None:
        if self.stop_at is not None and step + self.cfg.grad_window >= self.stop_at:
            self._set_window(-1)  # no further update: free the gradient buffers
            return
        if step % self.cfg.every == 0:
            self.history.append({"step": step, "replaced": self.update()})
        self._set_window(step)

    def resume_at(self, step: int) -> None:
        """Continue after a checkpoint taken at `step`: open the gradient window the hook had
        opened there (gradients it had accumulated before the checkpoint are not saved: a window
        of G > 1 steps cut by the checkpoint is only partly seen, see the module docstring)."""
        if self.stop_at is not None and step + self.cfg.grad_window >= self.stop_at:
            self._set_window(-1)
        else:
            self._set_window(step)

    def _set_window(self, step: int) -> None:
        """Accumulate gradients while computing step+1 iff it is among the last G of its period."""
        on = step >= 0 and step % self.cfg.every >= self.cfg.every - self.cfg.grad_window
        for layer in self.layers.values():
            if on and layer.acc_grad is None:
                layer.acc_grad = torch.zeros(layer.base.weight.shape, dtype=torch.float32,
                                             device=layer.base.weight.device)
            elif not on:
                layer.acc_grad = None

    @torch.no_grad()
    def update(self) -> int:
        """One drop/regrow round over all layers; returns the number of replaced entries."""
        replaced = 0
        for layer in self.layers.values():
            if layer.acc_grad is None:  # e.g. resumed right at an update: no gradients seen yet
                continue
            acc = layer.acc_grad
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(acc)
            k, n_total = layer.indices.numel(), acc.numel()
            n = min(int(round(self.cfg.drop_fraction * k)), n_total - k)
            if n < 1:
                continue
            slots = torch.topk(layer.values.detach().abs(), n, largest=False, sorted=False).indices
            score = acc.abs().reshape(-1).clone()
            score[layer.indices] = -1.0  # never regrow a position that was tuned before the drop
            grown = torch.topk(score, n, sorted=False).indices
            layer.indices[slots] = grown
            layer.values[slots] = 0.0
            self._reset_optimizer_state(layer.values, slots)
            replaced += n
        return replaced

    def _reset_optimizer_state(self, values: torch.nn.Parameter, slots: torch.Tensor) -> None:
        optimizer = self.optimizer_ref.optimizer
        if optimizer is None:
            if not self._warned:
                print("warning: regrow could not find the optimizer; regrown entries keep the "
                      "optimizer state of the entries they replace")
                self._warned = True
            return
        reset_adam_state_(optimizer, values, slots)

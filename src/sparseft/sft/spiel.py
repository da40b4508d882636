"""SpIEL reselection during training (`spiel_ag`, `spiel_ma`): a `post_step` hook for the loop.

Schedule (R = interval, A = accumulation_steps, T = planned optimizer steps; steps 1-based;
the hook runs right after optimizer step t):
  * a reselection happens at every t = R, 2R, ... with t < T (never at the last step: it would
    only discard deltas and leave untrained zeros in the diff);
  * it changes n = min(round(rate_t * k), N - k) of each tensor's k slots, where
    rate_t = cfg.rate_at(t, T) (linear decay by default, see masks/spiel.py);
  * drop: the n slots with the smallest |delta|; their delta is discarded (that entry is back
    at W0, the saved diff never holds it);
  * regrow: the same n slots move to the n positions with the largest score among positions
    that were *not* in the mask before the drop, so an entry that was just dropped cannot come
    straight back, and every slot that changes points at a new position. The budget per tensor
    (and so the total k) stays exact, and `values` keeps its shape;
  * the new deltas start at 0, and their AdamW state (`exp_avg`, `exp_avg_sq`, and
    `max_exp_avg_sq` for amsgrad) is zeroed at the changed slots. The other slots keep their
    values and state. AdamW's step counter is per parameter, not per entry, so it is not reset
    (RigL does the same). A fresh entry therefore gets a bias correction for the global step,
    not its own, and its first updates are larger than lr. SpIEL's own SftAdamW keeps an
    "age" per entry for this; torch's AdamW has none.

Regrow scores:
  * `spiel_ag`, accumulated gradient: during the A steps t-A+1..t, each SparseDelta layer adds
    the dense gradient of its weight into `acc_grad`. The backward pass computes that [out, in]
    gradient anyway, to gather the k trained entries. The score is |sum of those gradients|.
    Memory: one fp32 tensor of the weight's size per targeted weight, that is 4 bytes x N
    targeted entries (MiniLM's Linear weights: about 42 MB; a 7B model: about 26 GB). It exists
    during the window only; the hook frees it after each reselection. SpIEL saves memory
    further by tracking only a few candidates per slot; that is not implemented here.
  * `spiel_ma`, SM3 momentum approximation: each layer keeps a row accumulator r [out] and a
    column accumulator c [in] (fp32, O(out + in) memory, kept for the whole run). Every
    backward applies the SM3 update to the dense gradient g: nu = beta * min(r_i, c_j) + g_ij^2,
    then r_i = max_j nu_ij and c_j = max_i nu_ij. nu is one transient [out, in] tensor.
    With beta = 1, min(r_i, c_j) is an upper bound of sum_t g_ij^2 (Anil et al. 2019). The
    score of an entry is r_i * c_j (estimate="product", SpIEL's code) or min(r_i, c_j)
    ("min"). It is built one layer at a time, only at a reselection. The approximation treats
    a whole row or column as one cover set: positions in a row with one large gradient all
    look large, and among them only the column accumulator separates them. The trained
    entries themselves are still optimized by AdamW; SpIEL-MA uses SM3 as their optimizer too.
    With grad_accum > 1, the update runs once per micro-batch, not on their sum.

Only `nn.Linear` targets are reselected: the generic path of other module types (Embedding,
Conv1D) gives no dense weight gradient to accumulate, so their initial mask is kept. A warning
is printed once.

Multi-process (DDP): before scoring, AG buffers are summed over processes and MA accumulators
are maxed over processes (all_reduce). |delta| is the same everywhere, so every process makes
the same choice. Under fsdp/deepspeed the loop refuses post_step hooks.

Accumulation starts after the hook's first call (after step 1), so backward passes that run
before training (the loop's precision probe under mixed_precision=auto on CPUs) never count;
step 1's gradient is not seen (it matters only for AG with A = R, at the first reselection).

Resume: the gradient buffers and SM3 accumulators are not part of the checkpoint. They restart
after the first step after resuming: a run resumed inside an AG window uses the rest of that
window, and a resumed spiel_ma run starts its accumulators again. Both continue correctly, but
they are not bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from sparseft.masks.spiel import SpielAGMaskConfig, SpielMAMaskConfig, SpielMaskConfig
from sparseft.sft.layer import SparseDelta
from sparseft.sft.regrow import OptimizerRef, reset_adam_state_


class SM3RowCol:
    """Row and column accumulators of one [out, in] weight, sitting in `SparseDelta.acc_grad`.

    `_SparseLinearFn.backward` runs `layer.acc_grad += grad_w`; that calls `__iadd__`, which
    applies one SM3 update and returns this object (see the module docstring).
    """

    def __init__(self, weight: torch.Tensor, beta: float = 1.0) -> None:
        rows = weight.shape[0]
        self.row = torch.zeros(rows, dtype=torch.float32, device=weight.device)                  # [out]
        self.col = torch.zeros(weight.numel() // rows, dtype=torch.float32, device=weight.device)  # [in]
        self.beta = beta
        self.updates = 0

    @torch.no_grad()
    def __iadd__(self, grad_w: torch.Tensor) -> "SM3RowCol":
        g = grad_w.reshape(self.row.numel(), -1).float()                        # [out, in]
        nu = torch.minimum(self.row[:, None], self.col[None, :])                # [out, in], transient
        if self.beta != 1.0:
            nu.mul_(self.beta)
        nu.addcmul_(g, g)
        self.row = nu.amax(dim=1)
        self.col = nu.amax(dim=0)
        self.updates += 1
        return self

    def estimate(self, how: str) -> torch.Tensor:
        """Flat [out * in] per-entry score: r_i * c_j ("product") or min(r_i, c_j) ("min")."""
        if how == "product":
            return torch.outer(self.row, self.col).reshape(-1)
        return torch.minimum(self.row[:, None], self.col[None, :]).reshape(-1)


@dataclass
class SpielHook:
    """`post_step(model, step)` that reselects entries every `cfg.interval` steps (see module
    docstring).

    Args:
        layers: {weight fqn: SparseDelta} from `sparsify_`.
        cfg: a SpielAGMaskConfig or SpielMAMaskConfig.
        total_steps: T, the optimizer steps the run will take (the rate decays over them).
        optimizer_ref: where to find the optimizer whose state is reset (`track_optimizer`).

    Example:
        >>> hook = SpielHook(layers, mask_config("spiel_ag", interval=20), total_steps=1000)  # doctest: +SKIP
        >>> train(model, data, cfg, post_step=[hook], ...)                                    # doctest: +SKIP
    """

    layers: dict[str, SparseDelta]
    cfg: SpielMaskConfig
    total_steps: int
    optimizer_ref: OptimizerRef = field(default_factory=OptimizerRef)
    history: list[dict] = field(default_factory=list)
    _warned_optimizer: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.cfg, (SpielAGMaskConfig, SpielMAMaskConfig)):
            raise TypeError(f"SpielHook needs a spiel_ag or spiel_ma config, got {type(self.cfg).__name__}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        self.dynamic = {n: layer for n, layer in self.layers.items() if isinstance(layer.base, nn.Linear)}
        skipped = sorted(set(self.layers) - set(self.dynamic))
        if skipped:
            print(f"warning: {len(skipped)} sparse tensors are not nn.Linear ({skipped[0]}, ...): SpIEL keeps "
                  f"their initial mask (no dense gradient to reselect from)", file=sys.stderr)
        # Nothing is armed before step 1: backward passes before training (the loop's precision
        # probe) must not count. Step 1's own gradient is therefore never accumulated.

    @property
    def accumulated(self) -> bool:
        """True for SpIEL-AG (windowed dense buffers), False for SpIEL-MA (row/column accumulators)."""
        return isinstance(self.cfg, SpielAGMaskConfig)

    def __call__(self, model: nn.Module, step: int) -> None:
        if self.is_reselection(step):
            rate = self.cfg.rate_at(step, self.total_steps)
            replaced = self.reselect(rate)
            self.history.append({"step": step, "rate": rate, "replaced": replaced})
        self.arm(step)

    def resume_at(self, step: int) -> None:
        """Continue after a checkpoint taken at `step`: nothing to restore, the accumulators
        restart at the first step after resuming (module docstring, "Resume")."""
        for layer in self.dynamic.values():
            layer.acc_grad = None

    def is_reselection(self, step: int) -> bool:
        return 0 < step < self.total_steps and step % self.cfg.interval == 0

    def arm(self, step: int) -> None:
        """Set up (or free) the accumulators that the backward of step `step + 1` fills."""
        upcoming = (step // self.cfg.interval + 1) * self.cfg.interval  # next reselection step
        if upcoming >= self.total_steps:  # no reselection left: free everything
            for layer in self.dynamic.values():
                layer.acc_grad = None
            return
        for layer in self.dynamic.values():
            if not self.accumulated:
                if layer.acc_grad is None:
                    layer.acc_grad = SM3RowCol(layer.base.weight, self.cfg.beta)
            elif step + 1 > upcoming - self.cfg.accumulation_steps:  # step + 1 is in the window
                if layer.acc_grad is None:
                    layer.acc_grad = torch.zeros(layer.base.weight.shape, dtype=torch.float32,
                                                 device=layer.base.weight.device)
            else:
                layer.acc_grad = None

    def scores(self, layer: SparseDelta) -> torch.Tensor | None:
        """Flat fp32 regrow score over the whole weight (a new tensor), or None if nothing was
        accumulated (e.g. resumed right at a reselection)."""
        acc = layer.acc_grad
        if acc is None:
            return None
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.accumulated:
            if distributed:
                torch.distributed.all_reduce(acc)
            return acc.abs().reshape(-1)
        if acc.updates == 0:
            return None
        if distributed:
            torch.distributed.all_reduce(acc.row, op=torch.distributed.ReduceOp.MAX)
            torch.distributed.all_reduce(acc.col, op=torch.distributed.ReduceOp.MAX)
        return acc.estimate(self.cfg.estimate)

    @torch.no_grad()
    def reselect(self, rate: float) -> int:
        """Drop and regrow in every layer at `rate`; returns the number of changed slots."""
        replaced = 0
        for layer in self.dynamic.values():
            score = self.scores(layer)
            if score is None:
                continue
            k = layer.indices.numel()
            n = min(int(round(rate * k)), score.numel() - k)
            if n >= 1:
                slots = torch.topk(layer.values.detach().abs(), n, largest=False, sorted=False).indices
                score[layer.indices] = -float("inf")  # only positions outside the pre-drop mask
                grown = torch.topk(score, n, sorted=False).indices
                layer.indices[slots] = grown
                layer.values[slots] = 0.0
                self._reset_state(layer.values, slots)
                replaced += n
            if self.accumulated:
                layer.acc_grad = None  # the window is used up; `arm` opens a fresh one
        return replaced

    def _reset_state(self, values: torch.nn.Parameter, slots: torch.Tensor) -> None:
        optimizer = self.optimizer_ref.optimizer
        if optimizer is None:
            if not self._warned_optimizer:
                print("warning: spiel could not find the optimizer; regrown entries keep the optimizer "
                      "state of the entries they replace", file=sys.stderr)
                self._warned_optimizer = True
            return
        reset_adam_state_(optimizer, values, slots)

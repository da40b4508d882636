"""Pruning during fine-tuning: the cubic schedule of Zhu & Gupta (2017) as a `post_step` hook.

Sparsity at optimizer step t (t0 = start, n pruning events every dt steps, end = t0 + n * dt):

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (end - t0)) ** 3     for t0 <= t <= end

so pruning is fast early (when many redundant weights exist) and slows down near the final
sparsity. At every pruning step the masks are recomputed from the current scores at s_t (already
pruned entries stay pruned: masks only shrink; with `regrow=True` and movement scores they are
chosen among all entries, so pruned weights can return); after *every* optimizer step the masks
are re-applied, so pruned weights are exactly zero at all times:

    pruner = GradualPruner(model, CubicSchedule(0.0, 0.9, start=0, end=800, every=40), scorer=...)
    train(model, data, cfg, collate_fn=..., post_step=[pruner])   # pruner calls reapply_masks_

`KeepMasks(masks)` is the same hook without a schedule (fine-tuning after one-shot pruning).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import torch

from sparseft.compress.prune.common import (LARGE_WEIGHT_WARNING, check_sparsity, large_weight_share,
                                            prunable_weights, select_masks)
from sparseft.compress.prune.magnitude import magnitude_scores
from sparseft.compress.prune.movement import MovementScorer
from sparseft.masks.mask import Masks, mask_stats, reapply_masks_


@dataclass(frozen=True)
class CubicSchedule:
    """Zhu & Gupta's cubic sparsity ramp from `initial` at step `start` to `final` at step `end`,
    updated every `every` steps (pruning steps: start, start + every, ..., and end)."""

    initial: float
    final: float
    start: int
    end: int
    every: int = 1

    def __post_init__(self) -> None:
        check_sparsity(self.initial, "initial_sparsity")
        check_sparsity(self.final, "final_sparsity")
        if self.initial > self.final:
            raise ValueError(f"initial sparsity {self.initial} exceeds final sparsity {self.final}")
        if not 0 <= self.start <= self.end:
            raise ValueError(f"need 0 <= start <= end, got start={self.start}, end={self.end}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1 step, got {self.every}")

    def sparsity_at(self, step: int) -> float:
        if step <= self.start:
            return self.initial
        if step >= self.end:
            return self.final
        frac = (step - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * (1.0 - frac) ** 3

    def is_prune_step(self, step: int) -> bool:
        return step == self.end or (self.start <= step < self.end and (step - self.start) % self.every == 0)


class Scorer(Protocol):
    """Importance of every targeted entry; `update` sees the model after each optimizer step."""

    def update(self, model: torch.nn.Module) -> None: ...

    def scores(self, model: torch.nn.Module) -> dict[str, torch.Tensor]: ...


class MagnitudeScorer:
    """|W| of the current weights (stateless)."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)

    def update(self, model: torch.nn.Module) -> None:
        return None

    def scores(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return magnitude_scores([(n, params[n]) for n in self.names])


class FixedScorer:
    """Scores drawn once and reused at every pruning step (the random baseline)."""

    def __init__(self, scores: dict[str, torch.Tensor]) -> None:
        self.fixed = scores

    def update(self, model: torch.nn.Module) -> None:
        return None

    def scores(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: s.clone() for n, s in self.fixed.items()}


class KeepMasks:
    """post_step hook: zero the pruned entries again after every optimizer step."""

    def __init__(self, masks: Masks) -> None:
        self.masks = masks

    def __call__(self, model: torch.nn.Module, step: int) -> None:
        reapply_masks_(model, self.masks)


class GradualPruner:
    """post_step hook running a sparsity schedule: prune at scheduled steps, re-apply masks always.

    Args:
        model: the model being trained (its targeted weights define the masks).
        schedule: a CubicSchedule.
        scorer: MagnitudeScorer or MovementScorer (sparseft.compress.prune.movement).
        targets / ignore: the weights to prune; allocation: 'global', 'per_tensor' or 'per_row'.
        regrow: every pruning step chooses among all entries, so a pruned weight whose score rose
            comes back with the value it had when it was pruned (Sanh et al.'s hard movement:
            the masks follow the scores instead of only shrinking). Needs a MovementScorer, whose
            scores of pruned entries keep accumulating with those held values. Holds one fp32
            copy of the targeted weights.
    """

    def __init__(self, model: torch.nn.Module, schedule: CubicSchedule, scorer: Scorer, *,
                 targets: list[str], ignore: list[str], allocation: str = "global", regrow: bool = False) -> None:
        if regrow and not isinstance(scorer, MovementScorer):
            raise ValueError(f"regrow needs movement scores, got {type(scorer).__name__}")
        self.schedule = schedule
        self.scorer = scorer
        self.allocation = allocation
        self.regrow = regrow
        self.regrown = 0
        self.names = [n for n, _ in prunable_weights(model, targets, ignore)]
        self.masks: Masks = {}
        self.current = 0.0
        self.history: list[dict] = []
        self.last_step: int | None = None   # None until the first optimizer step is seen
        self.warned = False
        if schedule.start == 0 and schedule.initial > 0:
            self.prune_now(model, 0)

    @torch.no_grad()
    def prune_now(self, model: torch.nn.Module, step: int) -> None:
        """Recompute the masks at the scheduled sparsity of `step` and apply them."""
        target = self.schedule.sparsity_at(step)
        scores = self.scorer.scores(model)
        if not self.regrow:
            for name, mask in self.masks.items():   # pruned entries stay pruned: masks only shrink
                scores[name] = scores[name].masked_fill(~mask.to(scores[name].device), float("-inf"))
        before, self.masks = self.masks, select_masks(scores, target, self.allocation)
        large = large_weight_share(model, before, self.masks)
        regrown = self._hold_and_restore_(model, before) if self.regrow else 0
        if large > LARGE_WEIGHT_WARNING and isinstance(self.scorer, MovementScorer) and not self.warned:
            self.warned = True
            warnings.warn(f"pruning step {step}: {large:.0%} of the newly pruned weights are larger than their "
                          f"tensor's median |W|. Movement scores of an already fine-tuned model are gradient noise "
                          f"times |W| and remove the largest weights first; fine-prune from the pretrained model "
                          f"(distilling from the fine-tuned one) or use pruner 'magnitude'", stacklevel=2)
        self.current = target
        reapply_masks_(model, self.masks)
        self.history.append({"step": step, "sparsity": target, "density": mask_stats(self.masks)["density"],
                             "large_weight_share": round(large, 4), **({"regrown": regrown} if self.regrow else {})})

    @torch.no_grad()
    def _hold_and_restore_(self, model: torch.nn.Module, before: Masks) -> int:
        """Regrow mode: keep the values of entries pruned now; give regrown entries theirs back.
        Returns how many entries came back."""
        params = dict(model.named_parameters())
        count = 0
        for name, mask in self.masks.items():
            p = params[name]
            kept = mask.to(p.device)
            if name not in self.scorer.held:   # first pruning step (or the first after a resume: zeros stay 0)
                values = torch.zeros_like(p, dtype=torch.float32)
                was = before[name].to(p.device) if name in before else torch.ones_like(kept)
            else:
                was, values = self.scorer.held[name]
            values = torch.where(was & ~kept, p.detach().float(), values)   # pruned at this step: hold
            back = kept & ~was
            if back.any():
                p.data[back] = values[back].to(p.dtype)
                count += int(back.sum())
            self.scorer.held[name] = (kept, values)
        self.regrown += count
        return count

    @torch.no_grad()
    def _resume(self, model: torch.nn.Module) -> None:
        """First call after a resumed run: the zeros in the restored weights are the masks.
        (A movement scorer restarts from zero: its running sums are not checkpointed.)"""
        params = dict(model.named_parameters())
        self.masks = {n: params[n].detach() != 0 for n in self.names}
        self.current = 1.0 - mask_stats(self.masks)["density"]

    def __call__(self, model: torch.nn.Module, step: int) -> None:
        if self.last_step is None and step > 1:
            self._resume(model)
        self.last_step = step
        self.scorer.update(model)
        if self.schedule.is_prune_step(step) and self.schedule.sparsity_at(step) > self.current:
            self.prune_now(model, step)
        if self.masks:
            reapply_masks_(model, self.masks)   # pruned weights stay exactly zero after every step

"""Mask selection from per-shard scores under `distributed=fsdp`: no rank holds a whole score or
gradient tensor of the targeted weights.

Each rank scores only the rows its FSDP2 `Shard(0)` chunk owns of every targeted weight (the
chunks `fully_shard` cuts: ceil(rows / N) rows per rank, the last ones short or empty, so a
chunk is one contiguous flat range), then `sparseft.train.sharded_topk.sharded_topk_indices`
finds the exact top-k (global allocation: one k over all targets; per_tensor: each tensor's
quota, as `topk_masks` computes it) and gives every rank the same sorted flat indices, from
which the SparseDelta index buffers are built. The result equals 1-process `select_masks` at the
same global batch (ties in position order, exactly as `topk_masks` breaks them):

    magnitude  |W0| of the local rows (a view of the host weight, abs of 1/N of it)
    random     the one seeded stream of `random_scores`, drawn tensor by tensor in model order in
               chunks of 1M: each rank keeps its rows' draws and discards the rest (the CPU
               generator gives the same values in chunks as in one draw), so the scores are the
               1-process ones at O(local + 1M) memory
    fisher     the calibration batches run through a sharded replica (FSDP2 over aliases of the
               host weights: no second host copy; only the targeted weights require grad). FSDP
               reduce-scatters each gradient, so a rank receives only its gradient shard and sums
               its squares; the unsharded gradient of one FSDP unit (a block) exists transiently
               during its reduce-scatter, as in training. Rank r takes batch r of each group of N
               per-process batches (the loop's own split) and FSDP averages over ranks, so each
               group's gradient is the global batch's (the loss is a mean per rank, so this is
               exact when the ranks see as many tokens, as the loop's loss is).
    lottery    the dense phase (AdamW, warm-up, clipping at 1.0, train mode: `lottery_scores`)
               trains a sharded replica over aliases of the host weights; FSDP keeps its own copy of
               each rank's rows, so the host weights stay W0 (nothing to rewind) and the score is
               |W_local - W0 rows|. Memory: full fine-tuning's, 1/N per rank. Equal to 1 process up
               to the rounding of the reductions, which AdamW can amplify on a few near-tied entries.
    regrow, spiel_ag, spiel_ma   refused with one line (`REFUSED`): their post-step hooks edit whole weights.

Another registered mask method has no sharded scorer: `sparse_finetune` then selects on the host
copy (`select_masks`, rank 0's masks broadcast) and warns once.

    idx, scored = select_indices_sharded(model, cfg, batches=mine, loss_fn=loss, device=dev)
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

from sparseft.masks.config import MaskConfig
from sparseft.masks.fisher import FisherMaskConfig, to_device
from sparseft.masks.lottery import LotteryMaskConfig, dense_phase_
from sparseft.masks.magnitude import MagnitudeMaskConfig
from sparseft.masks.mask import per_tensor_quotas
from sparseft.masks.random import RandomMaskConfig
from sparseft.masks.select import budget_quotas, target_parameters
from sparseft.registry import REGISTRY
from sparseft.train import distributed
from sparseft.train.sharded_topk import sharded_topk_indices

_CHUNK = 1 << 20  # random draws discarded per step while skipping other ranks' rows

REFUSED = {
    "regrow": "mask=regrow cannot run under distributed=fsdp: its drop/regrow post_step hook edits whole "
              "weights, which are sharded; use mask=fisher or magnitude, or distributed=ddp",
    **{m: f"mask={m} cannot run under distributed=fsdp: its reselection hook reads dense gradients and "
          "moves entries of whole weights, which are sharded; use mask=fisher or magnitude, or distributed=ddp"
       for m in ("spiel_ag", "spiel_ma")},
}


def has_sharded_scorer(cfg: MaskConfig) -> bool:
    """True for the methods scored per shard here (magnitude, random, fisher, lottery)."""
    return type(cfg) in (MagnitudeMaskConfig, RandomMaskConfig, FisherMaskConfig, LotteryMaskConfig)


def check_sharded_supported(cfg: MaskConfig) -> None:
    """ValueError (one line) for a mask method that cannot run under distributed=fsdp."""
    name = REGISTRY.for_config(cfg).name
    if name in REFUSED:
        raise ValueError(REFUSED[name])


def row_range(rows: int, world: int, rank: int) -> tuple[int, int]:
    """Rows [r0, r1) of FSDP2's `Shard(0)` chunk on `rank` (torch.chunk sizes: ceil(rows/world))."""
    per = -(-rows // world)
    return min(rows, rank * per), min(rows, (rank + 1) * per)


def select_indices_sharded(model: nn.Module, cfg: MaskConfig, *, batches: list[dict] | None, loss_fn,
                           device: torch.device) -> tuple[dict[str, torch.Tensor], int]:
    """({weight fqn: sorted int64 flat indices, the same on every rank}, score entries this rank
    held). A collective: every rank calls it with the same model and config; `batches` are this
    rank's batches (fisher, lottery). Needs an initialised process group."""
    import torch.distributed as dist

    check_sharded_supported(cfg)
    if not has_sharded_scorer(cfg):
        raise ValueError(f"{type(cfg).__name__} has no sharded scorer (magnitude, random, fisher, lottery)")
    rank, world = dist.get_rank(), dist.get_world_size()
    params = target_parameters(model, cfg)
    if isinstance(cfg, FisherMaskConfig):
        scores = _fisher_local(model, params, batches, cfg.n_batches, loss_fn, device)
    elif isinstance(cfg, LotteryMaskConfig):
        scores = _lottery_local(model, params, cfg, batches, loss_fn, device, rank, world)
    elif isinstance(cfg, RandomMaskConfig):
        scores = _random_local(params, cfg.seed, rank, world)
    else:
        scores = {n: p.detach()[slice(*row_range(p.shape[0], world, rank))].abs() for n, p in params.items()}
    local = {}
    for name, p in params.items():  # (flat offset, flat local scores) in model order
        r0, r1 = row_range(p.shape[0], world, rank)
        s = scores[name].reshape(-1)
        assert s.numel() == (r1 - r0) * (p.numel() // p.shape[0]), f"{name}: scores are not this rank's rows"
        local[name] = (r0 * (p.numel() // p.shape[0]), s)
    scored = sum(s.numel() for _, s in local.values())
    budget = budget_quotas(params, cfg)
    if isinstance(budget, int) and cfg.allocation == "global":
        return sharded_topk_indices(local, budget), scored
    quotas = budget if isinstance(budget, dict) else per_tensor_quotas({n: p.numel() for n, p in params.items()}, budget)
    out = {}
    for name in params:  # every rank runs the same sequence of collectives (quotas agree everywhere)
        out[name] = (sharded_topk_indices({name: local[name]}, quotas[name])[name] if quotas[name] > 0
                     else torch.zeros(0, dtype=torch.long))
    return out, scored


def _random_local(params: dict[str, nn.Parameter], seed: int, rank: int, world: int) -> dict[str, torch.Tensor]:
    """This rank's rows of `random_scores`' draws (one generator, tensor by tensor, model order)."""
    gen = torch.Generator().manual_seed(seed)

    def skip(n: int) -> None:
        while n > 0:
            torch.rand(min(n, _CHUNK), generator=gen)
            n -= _CHUNK

    out = {}
    for name, p in params.items():
        row = p.numel() // p.shape[0]
        r0, r1 = row_range(p.shape[0], world, rank)
        skip(r0 * row)
        out[name] = torch.rand((r1 - r0) * row, generator=gen)
        skip((p.shape[0] - r1) * row)
    return out


def _fisher_local(model: nn.Module, params: dict[str, nn.Parameter], batches, n_batches: int, loss_fn,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """sum_b (local gradient shard)^2 over this rank's batches, on a sharded replica of `model`."""
    from torch.distributed.tensor import DTensor

    if not batches:
        raise ValueError("fisher mask selection under distributed=fsdp got no calibration batches on this rank")
    replica = distributed.aliased_copy(model)
    for name, p in replica.named_parameters():
        p.requires_grad_(name in params)
    distributed.shard_fsdp_(replica, device=device)
    replica.eval()  # no dropout: the mask is a function of the batches (as `gradient_scores`)
    sharded = dict(replica.named_parameters())
    scores: dict[str, torch.Tensor] = {}
    try:
        for batch in batches[:n_batches]:
            loss = loss_fn(replica, to_device(batch, device))
            loss.backward()
            for name in params:
                g = sharded[name].grad
                g = g.to_local() if isinstance(g, DTensor) else g  # FSDP's reduce-scattered shard
                sq = g.float().pow(2)
                scores[name] = scores[name] + sq if name in scores else sq
                sharded[name].grad = None
    finally:
        del replica, sharded
    return scores


def _lottery_local(model: nn.Module, params: dict[str, nn.Parameter], cfg: LotteryMaskConfig, batches, loss_fn,
                   device: torch.device, rank: int, world: int) -> dict[str, torch.Tensor]:
    """|W - W0| of this rank's rows after `lottery_scores`' dense phase, run on a sharded replica."""
    from torch.distributed.tensor import DTensor

    if not batches:
        raise ValueError("lottery mask selection under distributed=fsdp got no batches on this rank")
    replica = distributed.aliased_copy(model)
    for name, p in replica.named_parameters():
        if name in params:  # targeted weights move even if the caller froze them (as lottery_scores)
            p.requires_grad_(True)
    distributed.shard_fsdp_(replica, device=device)
    try:
        dense_phase_(replica, batches[:cfg.steps], cfg, loss_fn, device)
        sharded = dict(replica.named_parameters())
        scores = {}
        for name, p in params.items():
            w = sharded[name]
            w = w.to_local() if isinstance(w, DTensor) else w
            r0, r1 = row_range(p.shape[0], world, rank)
            scores[name] = (w.detach().cpu() - p.detach()[r0:r1].to(w.dtype)).abs().float()
    finally:
        del replica  # the dense phase's optimizer state is freed when dense_phase_ returns
    return scores


def report_scored(method: str, scored: int, total: int) -> None:
    """The line tests read: how many score entries this process held (about total / N)."""
    print(f"sharded mask selection ({method}): this process scored {scored:,} of {total:,} targeted entries",
          file=sys.stderr, flush=True)

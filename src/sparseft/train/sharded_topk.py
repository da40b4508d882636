"""Global top-k over scores that are sharded across processes (no rank holds all of them).

Each process passes, per tensor, its contiguous slice of the flattened scores (e.g. the rows its
FSDP shard owns: `Shard(0)` of a weight is a contiguous flat range) and the slice's flat offset.
The k-th largest score is found exactly by a 33-step bisection over an order-preserving integer
image of the float32 scores, one all-reduce of a count per step (O(1) communication each);
entries above it are selected, and ties at it are handed out in position order (tensor order,
then flat index, i.e. rank order inside a tensor) from an all-gather of per-slice tie counts. The
result is identical to `sparseft.masks.mask.topk_masks(full_scores, k)` with global allocation.
Only the selected indices (O(k)) are exchanged at the end, so every rank can build the same
`SparseDelta` index buffers. The small collectives run on the back end's device (CUDA under
NCCL, else CPU), so the scores may live on either.

    idx = sharded_topk_indices({"w": (offset, local_scores)}, k)   # {"w": sorted global flat indices}
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_LO, _HI = -(2 ** 31) - 1, 2 ** 31  # keys of float32 lie in [-2**31, 2**31 - 1]


def float_keys(scores: torch.Tensor) -> torch.Tensor:
    """int64 keys with the order of the float32 values (-0.0 counts as 0.0; NaN not allowed)."""
    bits = (scores.detach().reshape(-1).float() + 0.0).view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, -(bits & 0x7FFFFFFF) - 1)


def _comm_device(group) -> torch.device:
    """Where collective tensors must live: NCCL talks CUDA only, gloo CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_sum(value: torch.Tensor, group) -> torch.Tensor:
    value = value.to(_comm_device(group))
    dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value.cpu()


def sharded_topk_indices(local: dict[str, tuple[int, torch.Tensor]], k: int, group=None) -> dict[str, torch.Tensor]:
    """{name: sorted int64 global flat indices} of the k largest scores over all ranks' slices.

    Args:
        local: {name: (flat offset of this rank's slice, its 1-D scores)}; every rank passes the
            same names in the same order; slices of one tensor must not overlap.
        k: total number of entries to select (1 <= k <= total entries).
    """
    names = list(local)
    keys = {n: float_keys(local[n][1]) for n in names}
    nan = torch.tensor([int(any(torch.isnan(local[n][1]).any() for n in names))])
    if int(_all_sum(nan, group)):
        raise ValueError("sharded top-k: the scores contain NaN; cannot rank entries")
    total = int(_all_sum(torch.tensor([sum(keys[n].numel() for n in names)]), group))
    if not 0 < k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    lo, hi = _LO, _HI  # count(key >= lo) >= k > count(key >= hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        count = torch.tensor([sum(int((keys[n] >= mid).sum()) for n in names)])
        if int(_all_sum(count, group)) >= k:
            lo = mid
        else:
            hi = mid
    kth = lo  # key of the k-th largest score
    above = torch.tensor([sum(int((keys[n] > kth).sum()) for n in names)])
    remaining = k - int(_all_sum(above, group))
    # ties at the k-th value, in position order: tensor order, then flat offset (rank order)
    world = dist.get_world_size(group)
    ties = torch.tensor([[local[n][0], int((keys[n] == kth).sum())] for n in names], dtype=torch.int64,
                        device=_comm_device(group))
    gathered = [torch.zeros_like(ties) for _ in range(world)]
    dist.all_gather(gathered, ties, group=group)
    gathered = [g.cpu() for g in gathered]
    me = dist.get_rank(group)
    quota = {}
    for j, name in enumerate(names):
        for rank in sorted(range(world), key=lambda r: int(gathered[r][j, 0])):
            take = min(remaining, int(gathered[rank][j, 1]))
            remaining -= take
            if rank == me:
                quota[name] = take
    selected = {}
    for name in names:
        offset, key = local[name][0], keys[name]
        idx = torch.nonzero(key > kth).reshape(-1)
        tie = torch.nonzero(key == kth).reshape(-1)[: quota.get(name, 0)]
        selected[name] = (torch.cat([idx, tie]) + offset).cpu()
    everyone: list = [None] * world
    dist.all_gather_object(everyone, selected, group=group)  # O(k) indices, not the scores
    return {n: torch.sort(torch.cat([part[n] for part in everyone])).values for n in names}

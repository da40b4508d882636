"""Index arithmetic shared by the blocked kernel and the dense reference: which (query, key) pairs a
`SparseAttentionConfig` allows.

Everything here is defined on absolute positions (query i, key j), so a decoder's cached step and
its uncached forward agree. `pattern_mask` builds the full boolean [Lq, Lk] mask: it is the
reference the tests compare the blocked kernel against and the `dense_mask` backend; the kernel
itself only calls the per-pair helpers on the small key sets it gathers.
"""

from __future__ import annotations

import torch

from sparseft.attention.config import SparseAttentionConfig

_MASK32 = (1 << 32) - 1


def row_windows(cfg: SparseAttentionConfig, kv_len: int, key_padding: torch.Tensor | None = None,
                device=None) -> torch.Tensor:
    """The local window of each batch row: LongTensor [B] (or [1] when every row has the same one).

    An adaptive window follows each sequence's own length (its non-padding keys), so a sequence
    gets the same window whatever batch it is padded into; a fixed window is the same for all.
    Windows are capped at what kv_len keys can hold.
    """
    cap = (kv_len - 1) // cfg.dilation + 1
    if cfg.window == "sqrt" and key_padding is not None:
        lengths = key_padding.bool().sum(-1).tolist()
        return torch.tensor([min(cfg.window_for(n), cap) for n in lengths], dtype=torch.long, device=device)
    return torch.tensor([min(cfg.window_for(kv_len), cap)], dtype=torch.long, device=device)


def dense_at(cfg: SparseAttentionConfig, kv_len: int, key_padding: torch.Tensor | None = None) -> bool:
    """True when the pattern is full attention over every row's real tokens (window covers them)."""
    if cfg.dilation != 1:
        return False
    if cfg.window == "sqrt" and key_padding is not None:
        lengths = key_padding.bool().sum(-1)
        return bool((row_windows(cfg, kv_len, key_padding, lengths.device) >= lengths).all())
    return cfg.window_for(kv_len) >= kv_len


def in_local(delta: torch.Tensor, window, dilation: int, causal: bool) -> torch.Tensor:
    """Whether key j = i - delta is in query i's local window (delta = i - j, any shape; `window` an
    int or a tensor broadcastable against delta, e.g. one window per batch row)."""
    reach = (window - 1) * dilation
    dist = delta if causal else delta.abs()
    ok = (dist >= 0) & (dist <= reach)
    return ok & (dist % dilation == 0) if dilation > 1 else ok


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A cheap integer hash (xorshift-multiply rounds on 32-bit values, so int64 never overflows)."""
    x = x & _MASK32
    for mult in (0x5BD1E995, 0x27D4EB2F):
        x = ((x ^ (x >> 15)) * mult) & _MASK32
    return x ^ (x >> 13)


def random_key_blocks(cfg: SparseAttentionConfig, query_blocks: torch.Tensor, n_key_blocks: int,
                      causal: bool) -> torch.Tensor:
    """Key blocks drawn for each query block: LongTensor [*query_blocks.shape, random_blocks], -1 = none.

    Draw k of query block b is hash(seed, b, k) mod (number of candidate blocks): all key blocks in
    an encoder, the blocks before b in a decoder (so a block's draw never depends on the length).
    Repeated draws within one query block are set to -1 (each key is counted once).
    """
    r = cfg.random_blocks
    qb = query_blocks.long().unsqueeze(-1)
    slot = torch.arange(r, device=qb.device)
    x = _mix((qb * 73856093) ^ (slot * 19349663) ^ ((cfg.seed + 1) * 83492791))
    n_cand = qb.clamp(max=n_key_blocks) if causal else torch.full_like(qb, n_key_blocks)
    blocks = torch.where(n_cand > 0, x % n_cand.clamp(min=1), torch.full_like(x, -1))
    dup = (blocks.unsqueeze(-1) == blocks.unsqueeze(-2)).tril(-1).any(-1)  # an earlier slot drew it
    return blocks.masked_fill(dup, -1)


def shared_keys(cfg: SparseAttentionConfig, kv_len: int, device=None) -> torch.Tensor:
    """Keys every query may see (subject to causality): sinks, global columns, fixed summary columns."""
    keys = set(range(min(cfg.sinks, kv_len))) | set(cfg.global_list(kv_len))
    stride = cfg.stride_for(kv_len)
    if stride and cfg.stride_mode == "fixed":
        cols = torch.arange(kv_len)
        keys |= set(cols[cols % stride >= stride - cfg.fixed_width].tolist())
    return torch.tensor(sorted(keys), dtype=torch.long, device=device)


def pattern_mask(cfg: SparseAttentionConfig, q_len: int, kv_len: int, causal: bool, *, q_offset: int | None = None,
                 key_padding: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """The boolean [B|1, q_len, kv_len] mask of the whole pattern (reference; O(L^2) memory).

    Query k sits at position q_offset + k (default kv_len - q_len: the last q_len positions).
    `key_padding` only sets the adaptive windows (row_windows); padding itself is not applied here.
    """
    off = kv_len - q_len if q_offset is None else q_offset
    i = torch.arange(q_len, device=device).unsqueeze(1) + off
    j = torch.arange(kv_len, device=device).unsqueeze(0)
    delta = i - j
    windows = row_windows(cfg, kv_len, key_padding, device).view(-1, 1, 1)
    allowed = in_local(delta, windows, cfg.dilation, causal)                  # [B|1, q_len, kv_len]
    stride = cfg.stride_for(kv_len)
    if stride and cfg.stride_mode == "strided":
        allowed |= delta % stride == 0
    shared = shared_keys(cfg, kv_len, device)
    if len(shared):
        allowed[..., shared] = True
    glob = torch.tensor(cfg.global_list(kv_len), dtype=torch.long, device=device)
    rows = glob[(glob >= off) & (glob < off + q_len)] - off
    allowed[..., rows, :] = True
    if cfg.random_blocks:
        rb = cfg.random_block_size
        n_kb = -(-kv_len // rb)
        drawn = random_key_blocks(cfg, i[:, 0] // rb, n_kb, causal)            # [q_len, r]
        allowed |= (drawn.unsqueeze(1) == (j // rb).unsqueeze(-1)).any(-1)   # [q_len, kv_len]
    if causal:
        allowed &= delta >= 0
    return allowed

"""Blocked sparse attention in plain PyTorch: O(L * w) time and memory, forward and backward.

Queries are cut into blocks of `block` rows. Each block attends to one concatenated key set:

    local    the contiguous key span that covers the block's windows, as an `unfold` view of the
             padded keys ([n_blocks, span, D]; span = block + reach (causal) or block + 2 * reach)
    shared   sinks, global columns and "fixed" summary columns (the same keys for every block)
    random   the BigBird key blocks drawn for the query blocks the block touches (gathered by index)
    strided  for each query, keys i - m * stride (causal) / i % stride + m * stride (gathered by index)

and one softmax runs over the concatenation. A key that two sets contain is counted once: each
later set masks the pairs an earlier set already holds (local < shared < random < strided), so
the result equals dense attention under `pattern.pattern_mask`. Global query rows attend to all
keys: they are recomputed densely ([n_global, L] scores) and written over the blocked rows.

Grouped-query attention: the G query heads of one KV head are stacked along the row axis
([.., n_blocks, G * block, D]), so keys are never repeated. Autograd does the backward; the only
tensors it keeps are the per-block scores, the gathered keys and the small masks.
Rows that see no key at all (e.g. left padding in a decoder) come out as zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparseft.attention.config import SparseAttentionConfig
from sparseft.attention.pattern import in_local, random_key_blocks, row_windows, shared_keys


def auto_block(cfg: SparseAttentionConfig, window: int, causal: bool) -> int:
    """Query block size: the configured one, else from the window, clamped to [16, 128] (or the
    random block size when random blocks are on, so a block touches few draws).

    A block's key span is block + reach (causal) or block + 2 * reach, of which each query uses
    w (causal) or 2w - 1 keys: block = w / 2 (causal) and w (encoders) use about 2/3 of the span.
    """
    if cfg.block_size:
        return cfg.block_size
    if cfg.random_blocks:
        return cfg.random_block_size
    return max(16, min(128, window // 2 if causal else window))


def _span(t: torch.Tensor, start: int, length: int, dim: int) -> torch.Tensor:
    """t[start : start + length] along `dim`, zero-padded where the range leaves [0, size)."""
    size = t.shape[dim]
    lo, hi = max(start, 0), min(start + length, size)
    if hi <= lo:
        return t.new_zeros(*t.shape[:dim], length, *t.shape[dim + 1:])
    pad = [0, 0] * (t.dim() - 1 - dim) + [lo - start, start + length - hi]
    part = t.narrow(dim, lo, hi - lo)
    return F.pad(part, pad) if any(pad) else part


class _Grid:
    """Strided attention when every position is a query: position p = a * stride + c sits in row a,
    column c of an [nt, stride] grid, and query (a, c) attends to column c, so the scores are one
    batched matmul per column ([stride, nt, nt]) instead of gathering L * nt key vectors."""

    def __init__(self, bsz, kv_heads, groups, n_blocks, block, n_t, stride):
        self.shape = (bsz, kv_heads, groups, n_blocks, block)
        self.n_t, self.stride = n_t, stride

    def columns(self, t: torch.Tensor) -> torch.Tensor:
        """[B, Hk, L, D] keys or values -> [B, Hk, 1, stride, nt, D] (column-major grid)."""
        b, hk = t.shape[:2]
        g = _span(t, 0, self.n_t * self.stride, 2).view(b, hk, self.n_t, self.stride, -1)
        return g.transpose(2, 3).unsqueeze(2)

    def scores(self, q: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """q [B, H, q_pad, D] (scaled) -> strided scores in block layout [B, Hk, nb, G, block, nt]."""
        bsz, hk, groups, nb, block = self.shape
        qg = _span(q, 0, self.n_t * self.stride, 2).view(bsz, hk, groups, self.n_t, self.stride, -1)
        s = qg.transpose(3, 4) @ self.columns(key).transpose(-1, -2)          # [B, Hk, G, stride, nt, nt]
        s = s.transpose(3, 4).reshape(bsz, hk, groups, -1, self.n_t)         # [B, Hk, G, nt*stride, nt]
        return _span(s, 0, nb * block, 3).view(bsz, hk, groups, nb, block, self.n_t).transpose(2, 3)

    def apply(self, p: torch.Tensor, v_cols: torch.Tensor) -> torch.Tensor:
        """probs [B, Hk, nb, G, block, nt] x column values -> [B, Hk, nb, G, block, D]."""
        bsz, hk, groups, nb, block = self.shape
        p = p.transpose(2, 3).reshape(bsz, hk, groups, nb * block, self.n_t)
        p = _span(p, 0, self.n_t * self.stride, 3).view(bsz, hk, groups, self.n_t, self.stride, self.n_t)
        out = p.transpose(3, 4) @ v_cols                                      # [B, Hk, G, stride, nt, D]
        out = out.transpose(3, 4).reshape(bsz, hk, groups, self.n_t * self.stride, -1)
        return _span(out, 0, nb * block, 3).view(bsz, hk, groups, nb, block, -1).transpose(2, 3)


def _softmax_rows(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of `scores` where `keep`; rows with no kept entry give zeros."""
    scores = scores.masked_fill(~keep, float("-inf"))
    has = keep.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~has, 0.0), dim=-1)
    return probs.masked_fill(~has, 0.0)


def blocked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cfg: SparseAttentionConfig, *,
                      causal: bool, scaling: float, key_padding: torch.Tensor | None = None, dropout: float = 0.0,
                      q_offset: int | None = None) -> torch.Tensor:
    """Sparse attention under `cfg`.

    Args:
        query: [B, H, Lq, D]; key, value: [B, Hk, Lk, D] with H a multiple of Hk (GQA).
        causal: decoders: key j is visible to query i only if j <= i.
        scaling: score scale (usually D ** -0.5).
        key_padding: bool [B, Lk], True = a real token (None = no padding).
        dropout: attention-probability dropout (pass 0.0 in eval).
        q_offset: position of the first query (default Lk - Lq: queries are the last Lq keys).

    Returns:
        [B, Lq, H, D] (the layout transformers' attention functions return).
    """
    bsz, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    off = kv_len - q_len if q_offset is None else q_offset
    dev = query.device
    valid = torch.ones(1, kv_len, dtype=torch.bool, device=dev) if key_padding is None else key_padding.bool()
    win = row_windows(cfg, kv_len, key_padding, dev).view(-1, 1, 1, 1)       # [B|1, 1, 1, 1]: window per row
    window = int(win.max())
    reach = (window - 1) * cfg.dilation
    block = auto_block(cfg, window, causal)
    n_blocks = -(-q_len // block)
    q_pad = n_blocks * block
    span = block + reach + (0 if causal else reach)
    if win.shape[0] > valid.shape[0]:
        valid = valid.expand(win.shape[0], kv_len)
    qpos = off + torch.arange(q_pad, device=dev).view(n_blocks, block)        # absolute query positions

    # Queries: scaled, padded to whole blocks, GQA heads stacked per block: [B, Hk, nb, G*block, D].
    q = F.pad(query * scaling, (0, 0, 0, q_pad - q_len))
    q6 = q.view(bsz, kv_heads, groups, n_blocks, block, dim).transpose(2, 3)   # [B, Hk, nb, G, block, D]
    qs = q6.reshape(bsz, kv_heads, n_blocks, groups * block, dim)

    def rows(scores: torch.Tensor) -> torch.Tensor:                            # [.., nb, G*blk, K] -> 6-D
        return scores.view(bsz, kv_heads, n_blocks, groups, block, scores.shape[-1])

    # 1. local: span of block n starts at key off + n*block - reach; padded keys make it a view.
    first, n_span = off - reach, (n_blocks - 1) * block + span                # keys [first, first + n_span)
    k_loc = _span(key, first, n_span, 2).unfold(2, span, block).transpose(-1, -2)   # [B, Hk, nb, span, D]
    v_loc = _span(value, first, n_span, 2).unfold(2, span, block).transpose(-1, -2)
    valid_loc = _span(valid.to(torch.uint8), first, n_span, 1).bool().unfold(1, span, block)   # [B|1, nb, span]
    r_idx = torch.arange(block, device=dev).view(-1, 1)
    t_idx = torch.arange(span, device=dev).view(1, -1)
    band = in_local(r_idx + reach - t_idx, win, cfg.dilation, causal)        # [B|1, 1, block, span]
    scores = [rows(qs @ k_loc.transpose(-1, -2))]
    keeps = [band & valid_loc.unsqueeze(2)]                                   # [B|1, nb, block, span]
    values = [("block", v_loc)]

    # 2. shared keys (sinks, global columns, fixed summaries), minus what the window holds.
    shared = shared_keys(cfg, kv_len, dev)
    is_shared = torch.zeros(kv_len, dtype=torch.bool, device=dev)
    if len(shared):
        is_shared[shared] = True
        delta = qpos.unsqueeze(-1) - shared                                   # [nb, block, ns]
        keep = ~in_local(delta, win, cfg.dilation, causal)                   # [B|1, nb, block, ns]
        keep = keep & (delta >= 0) if causal else keep
        scores.append(rows(qs @ key[:, :, shared].unsqueeze(2).transpose(-1, -2)))
        keeps.append(keep & valid[:, shared].view(valid.shape[0], 1, 1, -1))
        values.append(("shared", value[:, :, shared]))

    # 3. random key blocks of the query blocks this block touches (owner = the query block).
    rb = cfg.random_block_size
    n_kb = -(-kv_len // rb)
    if cfg.random_blocks:
        qb_first = qpos[:, 0] // rb
        touch = (qpos[:, -1] // rb - qb_first).max().item() + 1
        owner = qb_first.unsqueeze(1) + torch.arange(touch, device=dev)       # [nb, touch]
        drawn = random_key_blocks(cfg, owner, n_kb, causal)                   # [nb, touch, r]
        keys = drawn.unsqueeze(-1) * rb + torch.arange(rb, device=dev)        # [nb, touch, r, rb]
        ok = (drawn.unsqueeze(-1) >= 0) & (keys < kv_len)
        owner = owner.view(n_blocks, touch, 1, 1).expand_as(keys).reshape(n_blocks, -1)
        keys, ok = keys.reshape(n_blocks, -1), ok.reshape(n_blocks, -1)       # [nb, nr]
        keys = torch.where(ok, keys, torch.zeros_like(keys))
        delta = qpos.unsqueeze(-1) - keys.unsqueeze(1)                        # [nb, block, nr]
        keep = (owner.unsqueeze(1) == (qpos // rb).unsqueeze(-1)) & ok.unsqueeze(1)
        keep = keep & ~in_local(delta, win, cfg.dilation, causal) & ~is_shared[keys].unsqueeze(1)
        keep = keep & (delta >= 0) if causal else keep
        scores.append(rows(qs @ key[:, :, keys].transpose(-1, -2)))           # key[:, :, keys]: [B,Hk,nb,nr,D]
        keeps.append(keep & valid[:, keys].unsqueeze(2))
        values.append(("block", value[:, :, keys]))

    # 4. strided keys, one set per query: key slot m of query i is j = i % stride + m * stride.
    stride = cfg.stride_for(kv_len)
    if stride and cfg.stride_mode == "strided":
        n_t = -(-kv_len // stride)
        m = torch.arange(n_t, device=dev)
        pos = qpos.reshape(-1, 1)                                             # [q_pad, 1]
        keys = pos % stride + m * stride                                      # [q_pad, nt]
        ok = (keys < kv_len) & (keys <= pos) if causal else keys < kv_len
        keys = torch.where(ok, keys, torch.zeros_like(keys))
        keep = ok & ~is_shared[keys]
        if cfg.random_blocks:
            drawn = random_key_blocks(cfg, pos[:, 0] // rb, n_kb, causal)    # [q_pad, r]
            keep &= ~(drawn.unsqueeze(1) == (keys // rb).unsqueeze(-1)).any(-1)
        local = in_local((pos - keys).view(1, n_blocks, block, n_t), win, cfg.dilation, causal)
        keep = keep.view(n_blocks, block, n_t) & ~local                      # [B|1, nb, block, nt]
        keeps.append(keep & valid[:, keys].view(valid.shape[0], n_blocks, block, n_t))
        if off == 0 and q_len == kv_len:   # every position queries: column attention on a [nt, stride] grid
            grid = _Grid(bsz, kv_heads, groups, n_blocks, block, n_t, stride)
            scores.append(grid.scores(q, key))
            values.append(("grid", grid.columns(value)))
        else:                              # a few queries (decoding): gather their keys
            k_str = key[:, :, keys].view(bsz, kv_heads, n_blocks, block, n_t, dim)
            scores.append(torch.einsum("bhngqd,bhnqtd->bhngqt", q6, k_str))
            values.append(("query", value[:, :, keys].view(bsz, kv_heads, n_blocks, block, n_t, dim)))

    # One softmax over the concatenated key sets; masks broadcast over heads and GQA groups.
    if len(scores) == 1:   # window only: no concatenation copies
        keep, all_scores = keeps[0], scores[0]
    else:
        keep = torch.cat([k.expand(k.shape[0], n_blocks, block, k.shape[-1]) for k in keeps], -1)
        all_scores = torch.cat(scores, -1)
    # Additive bias (0 / -inf; rows with no key get 0 and are zeroed at the output): one pass over
    # the scores for the mask and one for the softmax, the mask itself has no head axes.
    has = keep.any(-1, keepdim=True)                                            # [B|1, nb, block, 1]
    bias = torch.zeros(keep.shape, dtype=all_scores.dtype, device=dev).masked_fill_(~keep & has, float("-inf"))
    probs = torch.softmax(all_scores + bias.unsqueeze(1).unsqueeze(3), dim=-1)
    if dropout:
        probs = F.dropout(probs, p=dropout, training=True)
    out = None
    start = 0
    for (kind, v), s in zip(values, scores):
        p = probs[..., start:start + s.shape[-1]]
        start += s.shape[-1]
        if kind == "query":
            part = torch.einsum("bhngqt,bhnqtd->bhngqd", p, v)
        elif kind == "grid":
            part = grid.apply(p, v)
        else:
            flat = p.reshape(bsz, kv_heads, n_blocks, groups * block, -1)
            part = flat @ (v.unsqueeze(2) if kind == "shared" else v)          # [B, Hk, nb, G*block, D]
            part = part.view(bsz, kv_heads, n_blocks, groups, block, dim)
        out = part if out is None else out + part
    if not bool(has.all()):
        out = out.masked_fill(~has.unsqueeze(1).unsqueeze(3), 0.0)
    out = out.transpose(2, 3).reshape(bsz, heads, q_pad, dim)[:, :, :q_len]

    # Global rows see every (visible) key: recompute them densely and write them over.
    glob = torch.tensor(cfg.global_list(kv_len), dtype=torch.long, device=dev)
    glob = glob[(glob >= off) & (glob < off + q_len)] - off
    if len(glob):
        out = out.index_copy(2, glob, _dense_rows(query, key, value, glob, off, causal, scaling, valid, dropout))
    return out.transpose(1, 2)


def _dense_rows(query, key, value, rows, off, causal, scaling, valid, dropout) -> torch.Tensor:
    """Full attention of the query rows `rows` over all keys: [B, H, n_rows, D]."""
    bsz, heads, _, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    q = (query[:, :, rows] * scaling).view(bsz, kv_heads, groups * len(rows), dim)
    keep = valid.view(valid.shape[0], 1, 1, kv_len)
    if causal:
        pos = (rows + off).repeat(groups).view(1, 1, -1, 1)
        keep = keep & (torch.arange(kv_len, device=q.device) <= pos)
    probs = _softmax_rows(q @ key.transpose(-1, -2), keep)
    if dropout:
        probs = F.dropout(probs, p=dropout, training=True)
    return (probs @ value).view(bsz, heads, len(rows), dim)


def recomputed_blocked_attention(query, key, value, cfg: SparseAttentionConfig, *, causal: bool, scaling: float,
                                 key_padding=None, dropout: float = 0.0, q_offset: int | None = None,
                                 chunk_rows: int = 1024) -> torch.Tensor:
    """`blocked_attention` over query chunks under activation checkpointing: autograd keeps the
    inputs only and recomputes one chunk's scores at a time in the backward (same result; the
    dropout masks are replayed from the saved RNG state)."""
    from torch.utils.checkpoint import checkpoint

    q_len, kv_len = query.shape[2], key.shape[2]
    off = kv_len - q_len if q_offset is None else q_offset
    block = auto_block(cfg, int(row_windows(cfg, kv_len, key_padding).max()), causal)
    rows = block * max(1, chunk_rows // block)
    outs = []
    for start in range(0, q_len, rows):
        part = query[:, :, start:start + rows]
        outs.append(checkpoint(blocked_attention, part, key, value, cfg, causal=causal, scaling=scaling,
                               key_padding=key_padding, dropout=dropout, q_offset=off + start, use_reentrant=False))
    return torch.cat(outs, 1)

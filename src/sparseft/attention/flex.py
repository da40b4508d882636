"""Optional FlexAttention backend: the same pattern as a `mask_mod`, run by torch's flex_attention.

Compiled FlexAttention skips whole masked blocks (GPU; CPU inference through Inductor's C++
template). torch has no compiled FlexAttention backward on CPU, so CPU training uses the blocked
kernel (`backend: auto` never picks flex there, and `backend: flex` refuses it). Uncompiled
(`compiled=False`) flex_attention is torch's reference path: correct everywhere, but it
materialises the scores, so it is only for checking.

The mask_mod is index arithmetic plus look-ups in small tensors (the shared-key and global-row
flags, the key padding, and a [query blocks, key blocks] table of the random draws).
"""

from __future__ import annotations

import functools

import torch

from sparseft.attention.config import SparseAttentionConfig
from sparseft.attention.pattern import random_key_blocks, row_windows, shared_keys


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def pattern_mask_mod(cfg: SparseAttentionConfig, q_len: int, kv_len: int, causal: bool, *, key_padding=None,
                     device=None):
    """The pattern as a FlexAttention mask_mod(b, h, q_idx, kv_idx) -> bool."""
    off = kv_len - q_len
    dilation = cfg.dilation
    reach = (row_windows(cfg, kv_len, key_padding, device) - 1) * dilation    # [B|1]: adaptive windows per row
    per_row = reach.shape[0] > 1
    stride = cfg.stride_for(kv_len)
    strided = bool(stride) and cfg.stride_mode == "strided"
    is_shared = torch.zeros(kv_len, dtype=torch.bool, device=device)
    shared = shared_keys(cfg, kv_len, device)
    if len(shared):
        is_shared[shared] = True
    is_global = torch.zeros(kv_len, dtype=torch.bool, device=device)
    glob = cfg.global_list(kv_len)
    if glob:
        is_global[torch.tensor(glob, device=device)] = True
    rb = cfg.random_block_size
    n_kb = -(-kv_len // rb)
    table = None
    if cfg.random_blocks:   # [query blocks, key blocks] bool: (L / rb)^2 entries
        drawn = random_key_blocks(cfg, torch.arange(n_kb, device=device), n_kb, causal)
        table = torch.zeros(n_kb, n_kb + 1, dtype=torch.bool, device=device)
        table.scatter_(1, torch.where(drawn >= 0, drawn, torch.full_like(drawn, n_kb)), True)
    pad = None if key_padding is None else key_padding.bool().to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        pos = q_idx + off
        delta = pos - kv_idx
        dist = delta if causal else delta.abs()
        ok = (dist >= 0) & (dist <= reach[b if per_row else 0]) & (dist % dilation == 0)
        if strided:
            ok = ok | (delta % stride == 0)
        ok = ok | is_shared[kv_idx] | is_global[pos]
        if table is not None:
            ok = ok | table[pos // rb, kv_idx // rb]
        if causal:
            ok = ok & (delta >= 0)
        if pad is not None:
            ok = ok & pad[b, kv_idx]
        return ok

    return mask_mod


def flex_sparse_attention(query, key, value, cfg: SparseAttentionConfig, *, causal: bool, scaling: float,
                          key_padding=None, compiled: bool = True) -> torch.Tensor:
    """Sparse attention through FlexAttention: [B, Lq, H, D] (inference on CPU; GPU both ways)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if not query.is_cuda and torch.is_grad_enabled() and query.requires_grad and compiled:
        raise ValueError("SparseAttentionConfig.backend='flex' has no CPU backward in torch (compiled FlexAttention "
                         "is inference-only on CPU): use backend='blocked' or 'auto' to train on CPU")
    bsz, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
    mod = pattern_mask_mod(cfg, q_len, kv_len, causal, key_padding=key_padding, device=query.device)
    block = min(128, max(16, cfg.window_for(kv_len)))
    mask = create_block_mask(mod, bsz if key_padding is not None else None, None, q_len, kv_len,
                             device=query.device, BLOCK_SIZE=block, _compile=compiled)
    fn = _compiled_flex() if compiled else flex_attention
    out = fn(query, key, value, block_mask=mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2)

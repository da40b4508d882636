"""sparseft's attention for transformers models, plugged in through transformers' own registries.

`register()` adds one name, ATTN_NAME, to both `transformers.AttentionInterface` (the kernel) and
`AttentionMaskInterface` (the mask builder). Both registrations are needed: for a name missing from
the mask registry transformers builds no mask at all, padding and causality included.

The mask function returns only the 2-D key padding mask ([B, Lk] bool, None when nothing is
padded), as transformers' flash-attention mask does; it never builds an [L, L] mask. The attention
function receives that 2-D mask, reads the pattern from `module.config.sparseft_attention` (a
plain dict, saved in config.json) and causality from `module.is_causal`, and dispatches:

    pattern dense at this length (window >= every row's length) -> torch SDPA (exact full attention)
    backend "dense_mask"                                     -> the [L, L] boolean reference
    backend "flex" (or "auto" at inference where FlexAttention runs) -> flex.py
    otherwise ("blocked", "auto")                            -> kernel.blocked_attention
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from sparseft.attention.config import SparseAttentionConfig
from sparseft.attention.kernel import _softmax_rows, blocked_attention, recomputed_blocked_attention
from sparseft.attention.pattern import dense_at, in_local, pattern_mask

ATTN_NAME = "sparseft_sparse"   # the attn_implementation name; config.json keeps the pattern in CONFIG_KEY
CONFIG_KEY = "sparseft_attention"


def config_of(module) -> SparseAttentionConfig:
    """The pattern stored on a module's model config (error naming the field when it is missing)."""
    data = getattr(getattr(module, "config", None), CONFIG_KEY, None)
    if not data:
        raise ValueError(f"attn_implementation={ATTN_NAME!r} needs config.{CONFIG_KEY} "
                         f"(use sparseft.sparsify_attention_)")
    return data if isinstance(data, SparseAttentionConfig) else SparseAttentionConfig.from_dict(data)


def padding_mask_fn(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                    mask_function=None, attention_mask: torch.Tensor | None = None, **kwargs):
    """AttentionMaskInterface entry: the 2-D key padding mask sliced to the keys, or None."""
    if attention_mask is None:
        return None
    sinks = _rolled_sinks(kwargs.get("config")) if attention_mask.shape[1] > kv_length else 0
    if sinks:   # a rolled windowed cache holds [sinks | the most recent tokens]
        tail = attention_mask[:, attention_mask.shape[1] - (kv_length - sinks):]
        attention_mask = torch.cat([attention_mask[:, :sinks], tail], 1)
    mask = attention_mask[:, -kv_length:].bool()
    return None if mask.shape[1] == kv_length and bool(mask.all()) else mask


def _rolled_sinks(config) -> int:
    data = getattr(config, CONFIG_KEY, None)
    if not data:
        return 0
    from sparseft.attention.cache import sink_count

    return sink_count(SparseAttentionConfig.from_dict(data))


def dense_reference(query, key, value, allowed: torch.Tensor, *, scaling: float, key_padding=None,
                    dropout: float = 0.0) -> torch.Tensor:
    """Attention under a boolean [B|1, Lq, Lk] (or [Lq, Lk]) pattern (O(L^2)); [B, Lq, H, D].
    Rows with no key give 0."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    keep = allowed.view(-1, 1, *allowed.shape[-2:])
    if key_padding is not None:
        keep = keep & key_padding.bool().view(key_padding.shape[0], 1, 1, -1)
    probs = _softmax_rows((query * scaling) @ key.transpose(-1, -2), keep)
    if dropout:
        probs = F.dropout(probs, p=dropout, training=True)
    return (probs @ value).transpose(1, 2)


def _dense_sdpa(query, key, value, *, causal: bool, scaling: float, key_padding, dropout: float) -> torch.Tensor:
    """Full attention through torch SDPA (the pattern covers every key at this length)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    mask = None if key_padding is None else key_padding.bool().view(key_padding.shape[0], 1, 1, kv_len)
    if causal and q_len > 1:
        pos = torch.arange(q_len, device=query.device).view(-1, 1) + (kv_len - q_len)
        tri = torch.arange(kv_len, device=query.device) <= pos
        mask = tri if mask is None else mask & tri
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    if mask is not None and key_padding is not None:   # rows that see no key: zeros, as in the kernel
        out = out.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return out.transpose(1, 2)


def sparse_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             is_causal: bool | None = None, **kwargs):
    """AttentionInterface entry: (attn_output [B, Lq, H, D], None)."""
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"{ATTN_NAME} attention takes a 2-D padding mask, got a {attention_mask.dim()}-D mask "
                         f"(custom 4-D masks need attn_implementation='sdpa')")
    cfg = config_of(module)
    if attention_mask is not None and (cfg.sinks or cfg.global_tokens) and not bool(attention_mask[:, 0].all()):
        warnings.warn(f"{ATTN_NAME}: sinks / global tokens are the first positions of each row, which are padding "
                      f"in left-padded rows (those rows lose them): pad on the right", RuntimeWarning, stacklevel=2)
    causal = bool(getattr(module, "is_causal", False) if is_causal is None else is_causal)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    dropout = dropout if module.training else 0.0
    kv_len = key.shape[2]
    positions = kwargs.get("position_ids")
    if positions is not None and attention_mask is None and _restarts(positions):
        raise ValueError(f"{ATTN_NAME} attention does not support packed sequences (position_ids restart inside a "
                         f"row, e.g. chat-sft --packing): train without packing")
    if causal and positions is not None and kv_len < int(positions.max()) + 1:   # a rolled windowed cache
        return rolled_attention(query, key, value, cfg, positions, scaling=scaling, key_padding=attention_mask), None
    if dense_at(cfg, kv_len, attention_mask):
        return _dense_sdpa(query, key, value, causal=causal, scaling=scaling, key_padding=attention_mask,
                           dropout=dropout), None
    if cfg.backend == "dense_mask":
        allowed = pattern_mask(cfg, query.shape[2], kv_len, causal, key_padding=attention_mask, device=query.device)
        return dense_reference(query, key, value, allowed, scaling=scaling, key_padding=attention_mask,
                               dropout=dropout), None
    if cfg.backend == "flex" or (cfg.backend == "auto" and _flex_ok(query, module)):
        from sparseft.attention.flex import flex_sparse_attention

        return flex_sparse_attention(query, key, value, cfg, causal=causal, scaling=scaling,
                                     key_padding=attention_mask), None
    kernel = recomputed_blocked_attention if cfg.recompute and torch.is_grad_enabled() else blocked_attention
    return kernel(query, key, value, cfg, causal=causal, scaling=scaling, key_padding=attention_mask,
                  dropout=dropout), None


def rolled_attention(query, key, value, cfg: SparseAttentionConfig, positions: torch.Tensor, *, scaling: float,
                     key_padding=None) -> torch.Tensor:
    """Decoding over a rolled cache (cache.py): keys = [sinks | the most recent tokens], so the pattern
    is evaluated on their true positions; [Lq, sinks + window] mask, never [L, L]."""
    from sparseft.attention.cache import sink_count

    if cfg.stride or cfg.random_blocks or cfg.global_positions:
        raise ValueError(f"{ATTN_NAME}: fewer keys ({key.shape[2]}) than positions ({int(positions.max()) + 1}) but "
                         f"the pattern needs keys outside the window (stride / random_blocks / global_positions); "
                         f"rolled caches (attention/cache.py) hold window and sinks only")
    row = int(positions[:, -1].argmax())           # the least padded row: its positions are the cache slots
    total = int(positions[row, -1]) + 1
    kv_len, sinks = key.shape[2], sink_count(cfg)
    kpos = torch.cat([torch.arange(sinks), torch.arange(total - (kv_len - sinks), total)]).to(query.device)
    qpos = positions[row].to(query.device).view(-1, 1)
    delta = qpos - kpos
    allowed = (in_local(delta, cfg.window_for(total), cfg.dilation, True) | (kpos < sinks)) & (delta >= 0)
    return dense_reference(query, key, value, allowed, scaling=scaling, key_padding=key_padding)


def _restarts(positions: torch.Tensor) -> bool:
    """Whether position_ids restart inside a row (several packed sequences in one row)."""
    return positions.shape[-1] > 1 and bool((positions.diff(dim=-1) < 0).any())


def _flex_ok(query: torch.Tensor, module) -> bool:
    """`auto` picks FlexAttention only on GPU (CPU has no compiled backward; the blocked kernel trains)."""
    return query.is_cuda and not torch.is_grad_enabled()


def register() -> str:
    """Register ATTN_NAME with transformers' attention and mask registries (idempotent); returns it."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, sparse_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, padding_mask_fn)
    return ATTN_NAME

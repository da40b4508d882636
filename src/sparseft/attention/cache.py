"""A rolling KV cache for decoding with window (+ sinks) attention: O(sinks + window) memory per layer.

transformers' own `DynamicSlidingWindowLayer` keeps the last `sliding_window - 1` tokens but has
no attention sinks, so `SinkWindowLayer` extends its base `DynamicLayer` (a public cache layer):
it keeps the first `sinks` tokens and the last `reach = (window - 1) * dilation` tokens, and
counts every token it has seen (`get_seq_length`, from which the model derives positions).

Before the cache rolls, keys are contiguous and the attention function runs as in an uncached
forward. Once it has rolled, the keys of a layer are [sinks | the most recent tokens]; the
attention function sees fewer keys than the query position implies (position_ids come with the
attention kwargs) and attends over exactly these keys with the pattern evaluated on their true
positions (interface.rolled_attention). So cached generation equals the uncached windowed forward.

    cache = windowed_cache(model)                      # model already sparsified, int window
    model.generate(ids, past_key_values=cache, max_new_tokens=64)
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from sparseft.attention.config import SparseAttentionConfig


def sink_count(cfg: SparseAttentionConfig) -> int:
    """Tokens a rolled cache keeps at the start: the sinks (the first global tokens act as sinks)."""
    return max(cfg.sinks, cfg.global_tokens)


class SinkWindowLayer(DynamicLayer):
    """One layer's cache: the first `sinks` tokens plus the last `recent` tokens."""

    def __init__(self, sinks: int, recent: int) -> None:
        super().__init__()
        self.sinks, self.recent = sinks, recent
        self.cumulative_length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        if keys.shape[-2] > self.sinks + self.recent:   # roll: keep sinks + most recent (copies, no views)
            tail = slice(keys.shape[-2] - self.recent, None)
            self.keys = torch.cat([keys[:, :, :self.sinks], keys[:, :, tail]], dim=-2)
            self.values = torch.cat([values[:, :, :self.sinks], values[:, :, tail]], dim=-2)
        else:
            self.keys, self.values = keys, values
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.keys.shape[-2] if self.is_initialized else 0
        return stored + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1


def windowed_cache(model, *, max_length: int | None = None) -> Cache:
    """A `Cache` of SinkWindowLayer for `model` (sparsified with a window + sinks pattern).

    Args:
        max_length: needed for window="sqrt": the cache keeps the window of the longest sequence.
    """
    from sparseft.attention.apply import attention_config

    cfg = attention_config(model)
    if cfg is None:
        raise ValueError("windowed_cache: the model has no sparse attention (call sparsify_attention_ first)")
    if cfg.stride or cfg.random_blocks or cfg.global_positions:
        raise ValueError("windowed_cache: only window / dilation / sinks / global_tokens patterns can roll "
                         "(stride, random_blocks and global_positions need keys outside the window)")
    if cfg.window == "sqrt" and max_length is None:
        raise ValueError("windowed_cache: window='sqrt' grows with the length: pass max_length")
    window = cfg.window_for(max_length or 1)
    recent = (window - 1) * cfg.dilation
    layers = model.config.get_text_config().num_hidden_layers
    return Cache(layers=[SinkWindowLayer(sink_count(cfg), recent) for _ in range(layers)])

"""`SparseAttentionConfig`: one dataclass for every sparse attention pattern sparseft computes.

A pattern is the union of composable parts, each defined on absolute token positions
(query i, key j; causal models additionally require j <= i):

    local     |i - j| = m * dilation with 0 <= m < w   (bidirectional)   /   0 <= i - j < w * dilation, same
              spacing (causal); w = `window`, or with window="sqrt" w = max(min_window, ceil(window_scale*sqrt(L)))
              computed per forward from each sequence's actual length L (its non-padding tokens, so a
              sequence gets the same window in any batch). w >= L (dilation 1) is dense attention.
              (stride="sqrt" and the random blocks' key-block count use the padded length.)
    strided   (i - j) % stride == 0              (Sparse Transformer "strided"; stride_mode="strided")
    fixed     j % stride >= stride - fixed_width (Sparse Transformer "fixed" summary columns)
    globals   rows and columns of the first `global_tokens` positions and of `global_positions`:
              they see every key and every query sees them ([CLS] is global_tokens=1)
    sinks     the first `sinks` keys are visible to every query (StreamingLLM attention sinks)
    random    each query block of `random_block_size` tokens sees `random_blocks` key blocks drawn by a
              seeded hash of (seed, query block, slot) (BigBird); causal models draw among earlier blocks

The config is stored as a plain dict on the model config (`config.sparseft_attention`), so it is
saved in config.json and read back by the attention function through `module.config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sparseft.config.base import BaseConfig

BACKENDS = ("auto", "blocked", "flex", "dense_mask")
STRIDE_MODES = ("strided", "fixed")


@dataclass
class SparseAttentionConfig(BaseConfig):
    """Args:
        window: local window: an int >= 1 (keys on each side, self included) or "sqrt" (adaptive).
        window_scale: c in K = ceil(c * sqrt(L)) for window="sqrt".
        min_window: lower bound on the adaptive window.
        dilation: spacing between the local window's keys (1 = contiguous).
        stride: Sparse Transformer stride (0 = off); "sqrt" picks ceil(sqrt(L)) per forward.
        stride_mode: "strided" ((i - j) % stride == 0) or "fixed" (summary columns).
        fixed_width: summary columns at the end of each stride block (stride_mode="fixed").
        global_tokens: the first G positions are global (see and are seen by all); 1 = [CLS].
        global_positions: further chosen global positions.
        sinks: the first S keys are always visible (decoders, StreamingLLM).
        random_blocks: BigBird random key blocks per query block (0 = off).
        random_block_size: block size of the random pattern.
        seed: seed of the random blocks.
        block_size: query block size of the blocked kernel (0 = auto from the window).
        recompute: training memory: keep only q, k, v for the backward and recompute the scores
            chunk by chunk (torch.utils.checkpoint over ~1k-query chunks; about one extra forward).
        backend: "auto" | "blocked" | "flex" | "dense_mask" (reference: builds the L x L mask).
    """

    window: int | str = "sqrt"
    window_scale: float = 1.0
    min_window: int = 16
    dilation: int = 1
    stride: int | str = 0
    stride_mode: str = "strided"
    fixed_width: int = 1
    global_tokens: int = 0
    global_positions: list[int] = field(default_factory=list)
    sinks: int = 0
    random_blocks: int = 0
    random_block_size: int = 16
    seed: int = 0
    block_size: int = 0
    recompute: bool = False
    backend: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.window, str):
            if self.window != "sqrt":
                raise ValueError(f"SparseAttentionConfig.window: expected an integer >= 1 or 'sqrt', "
                                 f"got {self.window!r}")
        elif self.window < 1:
            raise ValueError(f"SparseAttentionConfig.window: must be >= 1, got {self.window}")
        if isinstance(self.stride, str):
            if self.stride != "sqrt":
                raise ValueError(f"SparseAttentionConfig.stride: expected an integer >= 0 or 'sqrt', "
                                 f"got {self.stride!r}")
        elif self.stride < 0:
            raise ValueError(f"SparseAttentionConfig.stride: must be >= 0, got {self.stride}")
        for name in ("min_window", "dilation", "random_block_size", "fixed_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"SparseAttentionConfig.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("global_tokens", "sinks", "random_blocks", "block_size", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"SparseAttentionConfig.{name}: must be >= 0, got {getattr(self, name)}")
        if self.window_scale <= 0:
            raise ValueError(f"SparseAttentionConfig.window_scale: must be > 0, got {self.window_scale}")
        if any(p < 0 for p in self.global_positions):
            raise ValueError(f"SparseAttentionConfig.global_positions: must be >= 0, got {self.global_positions}")
        if self.stride_mode not in STRIDE_MODES:
            raise ValueError(f"SparseAttentionConfig.stride_mode: {self.stride_mode!r}; "
                             f"valid: {', '.join(STRIDE_MODES)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"SparseAttentionConfig.backend: {self.backend!r}; valid: {', '.join(BACKENDS)}")

    # ---- sizes resolved from the actual key length -------------------------------------------
    def window_for(self, length: int) -> int:
        """The local window w for `length` keys."""
        if self.window == "sqrt":
            return max(self.min_window, math.ceil(self.window_scale * math.sqrt(max(length, 1))))
        return int(self.window)

    def stride_for(self, length: int) -> int:
        """The Sparse Transformer stride for `length` keys (0 = off)."""
        if self.stride == "sqrt":
            return max(1, math.ceil(math.sqrt(max(length, 1))))
        return int(self.stride)

    def global_list(self, length: int) -> list[int]:
        """Sorted global positions below `length`."""
        return sorted({*range(min(self.global_tokens, length)), *(p for p in self.global_positions if p < length)})

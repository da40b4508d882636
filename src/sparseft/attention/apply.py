"""`sparsify_attention_(model, config)`: switch a transformers model to sparseft's sparse attention.

In place and reversible: the pattern is stored as a plain dict on every model config the model
holds (`config.sparseft_attention`, saved in config.json) and the model's attention implementation
is set through transformers' public `model.set_attn_implementation(ATTN_NAME)`. Nothing is
patched; a plain `from_pretrained` of a saved folder gives the dense model (attn_implementation is
not serialised by transformers), and `sparseft.load` restores the sparse attention
(`restore_attention_`).

    >>> sparsify_attention_(model, SparseAttentionConfig(window="sqrt", sinks=4))   # doctest: +SKIP
"""

from __future__ import annotations

import torch

from sparseft.attention.config import SparseAttentionConfig
from sparseft.attention.interface import ATTN_NAME, CONFIG_KEY, register
from sparseft.registry import REGISTRY, register_method


def _configs(model: torch.nn.Module) -> list:
    """Every distinct transformers config reachable from the model's modules (text/vision sub-configs)."""
    from transformers import PretrainedConfig

    seen: dict[int, object] = {}
    for module in [model, *model.modules()]:
        cfg = getattr(module, "config", None)
        if isinstance(cfg, PretrainedConfig):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


def sparsify_attention_(model: torch.nn.Module, config) -> None:
    """Apply the attention method registered for `type(config)` to `model` in place.

    Args:
        model: a transformers model whose attention goes through `AttentionInterface`
            (BERT family, Llama family and most current architectures).
        config: a SparseAttentionConfig.

    Example:
        >>> sparsify_attention_(model, SparseAttentionConfig(window=128, global_tokens=1))   # doctest: +SKIP
    """
    method = REGISTRY.for_config(config)
    if method.kind != "attention":
        raise TypeError(f"{type(config).__name__} configures a {method.kind} method, not an attention method")
    method.apply_fn(model, config)


def apply_sparse_attention_(model: torch.nn.Module, config: SparseAttentionConfig) -> None:
    """Store `config` on the model's configs and select the sparse attention implementation."""
    if not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"sparse attention needs a transformers PreTrainedModel, got {type(model).__name__}")
    register()
    data = config.to_dict()
    for cfg in _configs(model):
        setattr(cfg, CONFIG_KEY, data)
    model.set_attn_implementation(ATTN_NAME)
    if getattr(model.config, "_attn_implementation", None) != ATTN_NAME:
        raise ValueError(f"{type(model).__name__} cannot switch its attention implementation (it does not use "
                         f"transformers' AttentionInterface), so sparse attention cannot be applied")


def attention_config(model: torch.nn.Module) -> SparseAttentionConfig | None:
    """The sparse attention pattern stored on `model.config`, or None."""
    data = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    return SparseAttentionConfig.from_dict(data) if data else None


def restore_attention_(model: torch.nn.Module) -> bool:
    """After loading: re-enable the sparse attention a saved config.json records; True if it did."""
    config = attention_config(model)
    if config is None:
        return False
    apply_sparse_attention_(model, config)
    return True


def densify_attention_(model: torch.nn.Module, implementation: str = "sdpa") -> None:
    """Undo `sparsify_attention_`: back to a dense implementation, pattern removed from the configs."""
    for cfg in _configs(model):
        if hasattr(cfg, CONFIG_KEY):
            delattr(cfg, CONFIG_KEY)
    model.set_attn_implementation(implementation)


register_method(kind="attention", name="sparse", config_cls=SparseAttentionConfig, apply_fn=apply_sparse_attention_,
                description="local / adaptive-sqrt window, dilation, strided/fixed, global, sinks, random blocks")

"""Structured pruning: physically remove FFN neurons, attention heads and whole blocks.

The result is a smaller *dense* model: its Linear layers have fewer rows/columns and its config
says so (`intermediate_size`, `num_attention_heads`, `num_hidden_layers`), so a plain
`AutoModel*.from_pretrained(folder)` reloads it and it runs faster on any hardware.

    prune_(model, StructuredPruneConfig(ffn_sparsity=0.5))                          # weight norms
    prune_(model, StructuredPruneConfig(ffn_sparsity=0.5, head_sparsity=0.33,
                                        importance="activation"), batches=calib)

Units and importance (higher = kept):
  * FFN neuron j (BERT `intermediate.dense` row j + `output.dense` column j; Llama gate/up rows j
    + down column j). importance="weight": ||W_out[:, j]|| * ||W_in[j, :]||; "activation": the
    norm of the neuron's contribution to the block output over calibration tokens,
    ||X_j|| * ||W_out[:, j]|| (X_j = the neuron's activations).
  * attention head (Llama family only, see below): rows of q_proj and columns of o_proj;
    "weight": ||W_o[:, h]||_F * ||W_q[h, :]||_F, "activation": sum over tokens of ||W_o[:, h] x_h||^2.
    With grouped-query attention each KV group keeps the same number of query heads (and all
    its K/V); with plain multi-head attention whole heads (q, k, v, o) go.

Every block keeps the same number of units, the most important ones of that block: transformers
configs hold one `intermediate_size` / `num_attention_heads` for all layers, so per-layer sizes
would not reload. BERT heads cannot be removed with plain transformers >= 5: BertSelfAttention
derives the head size from hidden_size / num_attention_heads and `prune_heads` no longer exists,
so `head_sparsity > 0` on a BERT-family model is an error; prune FFN neurons and/or blocks
(`drop_layers`) there instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from sparseft.compress.prune.common import check_sparsity, n_pruned
from sparseft.compress.prune.layerwise import find_blocks
from sparseft.config.base import BaseConfig
from sparseft.registry import register_method

IMPORTANCE = ("weight", "activation")


@dataclass
class StructuredPruneConfig(BaseConfig):
    """Args:
        ffn_sparsity: fraction of FFN neurons removed in every block, in [0, 1).
        head_sparsity: fraction of attention heads removed in every block (Llama family), [0, 1).
        drop_layers: indices of whole blocks to remove (e.g. [4, 5]).
        importance: 'weight' (no data) or 'activation' (needs calibration batches).
        multiple_of: round the kept FFN width up to a multiple of this (matmul-friendly sizes).
    """

    ffn_sparsity: float = 0.5
    head_sparsity: float = 0.0
    drop_layers: list[int] = field(default_factory=list)
    importance: str = "weight"
    multiple_of: int = 1

    def __post_init__(self) -> None:
        check_sparsity(self.ffn_sparsity, "ffn_sparsity")
        check_sparsity(self.head_sparsity, "head_sparsity")
        if self.importance not in IMPORTANCE:
            raise ValueError(f"importance must be one of {IMPORTANCE}, got {self.importance!r}")
        if self.multiple_of < 1:
            raise ValueError(f"multiple_of must be >= 1, got {self.multiple_of}")
        bad = any(not isinstance(i, int) or i < 0 for i in self.drop_layers)
        if bad or len(set(self.drop_layers)) != len(self.drop_layers):
            raise ValueError(f"drop_layers must be distinct block indices >= 0, got {self.drop_layers}")
        if not (self.ffn_sparsity or self.head_sparsity or self.drop_layers):
            raise ValueError("nothing to prune: set ffn_sparsity, head_sparsity or drop_layers")

    def needs_batches(self) -> bool:
        return self.importance == "activation" and bool(self.ffn_sparsity or self.head_sparsity)


@dataclass
class BlockParts:
    """The Linear layers of one block that structured pruning edits."""

    family: str                  # "bert" or "llama"
    ffn_in: list[str]            # attribute paths whose rows are FFN neurons
    ffn_out: str                 # attribute path whose columns are FFN neurons
    q: str = ""
    k: str = ""
    v: str = ""
    o: str = ""


def block_parts(block: nn.Module) -> BlockParts:
    if hasattr(block, "attention") and hasattr(block, "intermediate") and hasattr(block, "output"):
        return BlockParts("bert", ["intermediate.dense"], "output.dense", "attention.self.query",
                          "attention.self.key", "attention.self.value", "attention.output.dense")
    mlp = getattr(block, "mlp", None)
    if hasattr(block, "self_attn") and mlp is not None and hasattr(mlp, "down_proj"):
        ffn_in = [p for p in ("mlp.gate_proj", "mlp.up_proj") if hasattr(mlp, p.split(".")[1])]
        return BlockParts("llama", ffn_in, "mlp.down_proj", "self_attn.q_proj", "self_attn.k_proj",
                          "self_attn.v_proj", "self_attn.o_proj")
    raise ValueError(f"structured pruning supports BERT-family and Llama-family blocks; "
                     f"{type(block).__name__} is neither")


def _get(module: nn.Module, path: str) -> nn.Linear:
    return module.get_submodule(path)


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, new)


@torch.no_grad()
def _slice_linear(layer: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
                  ) -> nn.Linear:
    """A new, smaller Linear keeping the given output rows / input columns (index tensors)."""
    w = layer.weight
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    if layer.bias is not None:
        new.bias.copy_(layer.bias[rows] if rows is not None else layer.bias)
    new.weight.requires_grad_(layer.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new


class _ActivationStats:
    """Per block: sum of squared FFN activations [I] and squared head contributions [H]."""

    def __init__(self) -> None:
        self.ffn: dict[int, torch.Tensor] = {}
        self.heads: dict[int, torch.Tensor] = {}


@torch.no_grad()
def _collect_activations(model, blocks, parts, batches, head_dim: int, want_heads: bool) -> _ActivationStats:
    stats = _ActivationStats()
    device = next(model.parameters()).device
    token_mask: list[torch.Tensor | None] = [None]
    handles = []

    def tokens(x):  # [B, T, F] -> [n_real_tokens, F]
        m = token_mask[0]
        return x[m] if m is not None and m.shape == x.shape[:2] else x.reshape(-1, x.shape[-1])

    for i, (block, p) in enumerate(zip(blocks, parts)):
        def ffn_hook(module, inp, out, i=i):
            x = tokens(inp[0].float())                                     # [n, I]
            stats.ffn[i] = stats.ffn.get(i, 0) + (x * x).sum(0)
        handles.append(_get(block, p.ffn_out).register_forward_hook(ffn_hook))
        if want_heads:
            def head_hook(module, inp, out, i=i):
                x = tokens(inp[0].float())                                 # [n, H*d]
                w = module.weight.float()                                  # [hidden, H*d]
                n_heads = x.shape[1] // head_dim
                contrib = torch.stack([((x[:, h * head_dim:(h + 1) * head_dim]
                                         @ w[:, h * head_dim:(h + 1) * head_dim].T) ** 2).sum()
                                       for h in range(n_heads)])          # [H]
                stats.heads[i] = stats.heads.get(i, 0) + contrib
            handles.append(_get(block, p.o).register_forward_hook(head_hook))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            mask = inputs.get("attention_mask")
            token_mask[0] = mask.bool() if mask is not None else None
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def _ffn_importance(block, p: BlockParts, act: torch.Tensor | None) -> torch.Tensor:
    out_w = _get(block, p.ffn_out).weight.float()                          # [hidden, I]
    col = out_w.norm(dim=0)                                                # [I]
    if act is not None:
        return act.sqrt() * col
    rows = torch.stack([_get(block, n).weight.float().norm(dim=1) for n in p.ffn_in]).norm(dim=0)  # [I]
    return col * rows


def _head_importance(block, p: BlockParts, head_dim: int, act: torch.Tensor | None) -> torch.Tensor:
    if act is not None:
        return act
    q = _get(block, p.q).weight.float()                                    # [H*d, hidden]
    o = _get(block, p.o).weight.float()                                    # [hidden, H*d]
    n_heads = q.shape[0] // head_dim
    return torch.stack([q[h * head_dim:(h + 1) * head_dim].norm() * o[:, h * head_dim:(h + 1) * head_dim].norm()
                        for h in range(n_heads)])


def _keep_ffn(n: int, cfg: StructuredPruneConfig) -> int:
    keep = n - n_pruned(n, cfg.ffn_sparsity)
    keep = -(-keep // cfg.multiple_of) * cfg.multiple_of
    return max(1, min(n, keep))


@torch.no_grad()
def _prune_ffn(block, p: BlockParts, keep: int, importance: torch.Tensor) -> None:
    idx = torch.topk(importance.double(), keep).indices.sort().values       # kept neurons, in order
    idx = idx.to(_get(block, p.ffn_out).weight.device)
    for name in p.ffn_in:
        _set(block, name, _slice_linear(_get(block, name), rows=idx))
    _set(block, p.ffn_out, _slice_linear(_get(block, p.ffn_out), cols=idx))
    mlp = block.get_submodule(p.ffn_out.rpartition(".")[0])
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = keep


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Row indices [len(heads) * head_dim] of the given heads in a [H*d, ...] projection."""
    return (heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).reshape(-1)


@torch.no_grad()
def _prune_heads_llama(block, p: BlockParts, n_heads: int, n_kv: int, keep_per_group: int,
                       importance: torch.Tensor, head_dim: int) -> tuple[int, int]:
    """Remove query heads (GQA: the same count in every KV group) or whole heads (MHA)."""
    group = n_heads // n_kv
    if group == 1:   # MHA: a head is q, k, v and o together
        kept = torch.topk(importance.double(), keep_per_group).indices.sort().values
        kv_kept = kept
    else:            # GQA: keep the best `keep_per_group` query heads of each KV group
        scores = importance.double().reshape(n_kv, group)                  # [kv, group]
        within = torch.topk(scores, keep_per_group, dim=1).indices.sort(dim=1).values
        kept = (within + torch.arange(n_kv).unsqueeze(1) * group).reshape(-1)
        kv_kept = None
    rows = _head_rows(kept, head_dim).to(_get(block, p.q).weight.device)
    _set(block, p.q, _slice_linear(_get(block, p.q), rows=rows))
    _set(block, p.o, _slice_linear(_get(block, p.o), cols=rows))
    if kv_kept is not None:
        kv_rows = _head_rows(kv_kept, head_dim).to(rows.device)
        _set(block, p.k, _slice_linear(_get(block, p.k), rows=kv_rows))
        _set(block, p.v, _slice_linear(_get(block, p.v), rows=kv_rows))
    new_heads = len(kept)
    new_kv = new_heads if kv_kept is not None else n_kv
    attn = block.get_submodule(p.q.rpartition(".")[0])
    attn.num_key_value_groups = new_heads // new_kv
    return new_heads, new_kv


def _drop_blocks(model, blocks_fqn: str, blocks: nn.ModuleList, drop: list[int]) -> nn.ModuleList:
    if max(drop) >= len(blocks) or len(drop) >= len(blocks):
        raise ValueError(f"drop_layers {drop} must name existing blocks (0..{len(blocks) - 1}) and keep at least one")
    kept = nn.ModuleList([b for i, b in enumerate(blocks) if i not in set(drop)])
    for new_idx, block in enumerate(kept):   # KV-cache slots follow the block index
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    _set(model, blocks_fqn, kept)
    config = model.config
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in set(drop)]
    return kept


@torch.no_grad()
def prune_structured_(model: nn.Module, config: StructuredPruneConfig, *, batches=None) -> None:
    """Remove FFN neurons / heads / blocks in place and update `model.config` to the new sizes."""
    blocks_fqn, blocks = find_blocks(model)
    if config.drop_layers:
        blocks = _drop_blocks(model, blocks_fqn, blocks, sorted(config.drop_layers))
    parts = [block_parts(b) for b in blocks]
    cfg = model.config
    family = parts[0].family
    if config.head_sparsity and family == "bert":
        raise ValueError("head_sparsity > 0 is not supported for BERT-family models: transformers >= 5 derives the "
                         "head size from hidden_size / num_attention_heads and has no prune_heads, so a model "
                         "with fewer heads would not reload; use ffn_sparsity and/or drop_layers")
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    group = n_heads // n_kv
    units = n_heads if group == 1 else group
    keep_heads = max(1, units - n_pruned(units, config.head_sparsity)) if config.head_sparsity else units

    stats = None
    if config.importance == "activation" and (config.ffn_sparsity or config.head_sparsity):
        if not batches:
            raise ValueError("importance='activation' needs calibration batches")
        stats = _collect_activations(model, blocks, parts, batches, head_dim, bool(config.head_sparsity))

    new_heads, new_kv = n_heads, n_kv
    for i, (block, p) in enumerate(zip(blocks, parts)):
        if config.ffn_sparsity:
            n_ffn = _get(block, p.ffn_out).in_features
            _prune_ffn(block, p, _keep_ffn(n_ffn, config),
                       _ffn_importance(block, p, stats.ffn.get(i) if stats else None))
        if config.head_sparsity and keep_heads < units:
            imp = _head_importance(block, p, head_dim, stats.heads.get(i) if stats else None)
            new_heads, new_kv = _prune_heads_llama(block, p, n_heads, n_kv, keep_heads, imp, head_dim)
    if config.ffn_sparsity:
        cfg.intermediate_size = _get(blocks[0], parts[0].ffn_out).in_features
    if (new_heads, new_kv) != (n_heads, n_kv):
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = new_heads, new_kv, head_dim


register_method(kind="prune", name="structured", config_cls=StructuredPruneConfig, apply_fn=prune_structured_,
                description="remove FFN neurons, attention heads (Llama) and blocks; smaller dense model")

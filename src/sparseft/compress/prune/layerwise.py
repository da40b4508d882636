"""Layer-by-layer calibration over a transformer's blocks, shared by Wanda and SparseGPT.

The model is not run end to end for every layer. Instead (as in the SparseGPT and Wanda
reference code):

  1. the inputs of block 0 are captured once for all calibration batches (a pre-hook records the
     hidden states and the keyword arguments the model passes, e.g. Llama's rotary
     `position_embeddings` and causal mask, then stops the forward);
  2. for each block in order: forward hooks on its targeted Linear layers feed the layer inputs
     (only real tokens: padding is dropped with the attention mask) into a per-layer statistics
     object, the block is run on all captured inputs, every targeted layer is pruned from its
     statistics, and the *pruned* block is run again to produce the next block's inputs, so
     later layers are calibrated on what the pruned model actually computes. With
     `sequential=True` step 2 runs group by group inside the block too (see `input_groups`).

Works for any model whose blocks sit in one `nn.ModuleList` with `config.num_hidden_layers`
entries (Llama family incl. SmolLM2, BERT family, most transformers models). Peak extra memory is
the calibration hidden states: n_tokens x hidden_size floats.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from sparseft.compress.prune.common import prunable_weights


class LayerStats(Protocol):
    """Statistics of one Linear layer's inputs, accumulated batch by batch."""

    def add(self, x: torch.Tensor) -> None:  # x: [n_tokens, in_features]
        ...


class _StopForward(Exception):
    """Raised by the capture hook: nothing after block 0 needs to run."""


@dataclass
class BlockInput:
    """One calibration batch at the input of the current block."""

    hidden: torch.Tensor                 # [B, T, H]
    args: tuple                          # further positional arguments of the block call
    kwargs: dict[str, Any]               # keyword arguments (masks, rotary embeddings ...)
    token_mask: torch.Tensor | None      # [B, T] bool, True = real token (not padding)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(fqn, ModuleList) of the transformer blocks: the first ModuleList of num_hidden_layers."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for fqn, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n):
            return fqn, module
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}: no nn.ModuleList with "
                     f"config.num_hidden_layers={n} entries")


def _model_inputs(model: nn.Module, batch: dict, device: torch.device) -> dict:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    inputs = {k: batch[k].to(device) for k in keys if k in batch}
    if "use_cache" in inspect.signature(model.forward).parameters:
        inputs["use_cache"] = False  # no KV cache object captured into the block kwargs
    return inputs


@torch.no_grad()
def capture_block_inputs(model: nn.Module, blocks: nn.ModuleList, batches: list[dict]) -> list[BlockInput]:
    """Run each batch up to block 0 and record that block's call arguments."""
    device = next(model.parameters()).device
    captured: list[BlockInput] = []
    token_mask: list[torch.Tensor | None] = [None]  # set per batch before the forward

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if kwargs.get("past_key_values") is not None:
            kwargs["past_key_values"] = None
        captured.append(BlockInput(hidden.detach(), tuple(args[1:]), kwargs, token_mask[0]))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = _model_inputs(model, batch, device)
            mask = inputs.get("attention_mask")
            token_mask[0] = mask.bool() if mask is not None else None
            try:
                model(**inputs)
            except _StopForward:
                pass
            else:
                raise RuntimeError("calibration forward never reached the first transformer block")
    finally:
        handle.remove()
        model.train(was_training)
    return captured


def _run_block(block: nn.Module, item: BlockInput) -> torch.Tensor:
    out = block(item.hidden, *item.args, **item.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def layerwise_prune_(model: nn.Module, batches: list[dict], targets: list[str], ignore: list[str],
                     make_stats: Callable[[nn.Linear], LayerStats],
                     prune_layer: Callable[[str, nn.Linear, LayerStats], None], *,
                     sequential: bool = False) -> None:
    """Prune every targeted Linear block by block (see module docstring).

    Args:
        make_stats: builds the empty statistics object of one layer.
        prune_layer: (weight fqn, layer, its statistics) -> prunes layer.weight in place.
        sequential: inside each block, calibrate and prune the layers group by group in call order
            (layers reading the same input form one group), so e.g. o_proj is calibrated on the
            outputs of the already pruned q/k/v, and down_proj on those of the pruned gate/up
            (GPTQ's "true sequential"). One block forward per group instead of one per block.
    """
    selected = {id(p): name for name, p in prunable_weights(model, targets, ignore)}
    blocks_fqn, blocks = find_blocks(model)
    in_blocks: set[int] = set()
    per_block: list[list[tuple[str, nn.Linear]]] = []
    for i, block in enumerate(blocks):
        layers = []
        for sub, module in block.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, nn.Linear) and weight is not None and id(weight) in selected:
                layers.append((selected[id(weight)], module))
                in_blocks.add(id(weight))
        per_block.append(layers)
    outside = sorted(name for pid, name in selected.items() if pid not in in_blocks)
    if outside:
        raise ValueError(f"layer-wise pruning only handles Linear layers inside the transformer blocks "
                         f"({blocks_fqn}.*); add these to `ignore`: {outside}")

    items = capture_block_inputs(model, blocks, batches)
    was_training = model.training
    model.eval()
    try:
        for block, layers in zip(blocks, per_block):
            groups = input_groups(block, layers, items[0]) if sequential and layers else [layers]
            for group in groups:
                if group:
                    _calibrate_and_prune(block, group, items, make_stats, prune_layer)
            for item in items:  # the pruned block's outputs feed the next block
                item.hidden = _run_block(block, item)
    finally:
        model.train(was_training)


def _calibrate_and_prune(block: nn.Module, layers: list[tuple[str, nn.Linear]], items: list[BlockInput],
                         make_stats: Callable[[nn.Linear], LayerStats],
                         prune_layer: Callable[[str, nn.Linear, LayerStats], None]) -> None:
    """Run the block on every calibration batch collecting `layers`' input statistics, then prune them."""
    stats = {name: make_stats(layer) for name, layer in layers}
    current: list[torch.Tensor | None] = [None]  # token mask of the batch being run

    def make_hook(s: LayerStats):
        def hook(module, inp, out):
            x = inp[0].detach()                               # [B, T, in]
            mask = current[0]
            flat = x[mask] if mask is not None and mask.shape == x.shape[:2] else x.reshape(-1, x.shape[-1])
            s.add(flat.float())                               # [n_tokens, in]
        return hook

    handles = [layer.register_forward_hook(make_hook(stats[name])) for name, layer in layers]
    try:
        for item in items:
            current[0] = item.token_mask
            _run_block(block, item)
    finally:
        for h in handles:
            h.remove()
    for name, layer in layers:
        prune_layer(name, layer, stats.pop(name))


@torch.no_grad()
def input_groups(block: nn.Module, layers: list[tuple[str, nn.Linear]],
                 item: BlockInput) -> list[list[tuple[str, nn.Linear]]]:
    """Split a block's layers into groups that read the same input tensor, in call order.

    One probe forward records each layer's input; layers fed the very same tensor (Llama's q/k/v,
    gate/up; BERT's query/key/value) form one group. The inputs are held until the probe ends, so a
    freed tensor's memory cannot be reused and make two sequential layers look like one group.
    """
    seen: list[tuple[torch.Tensor, list[tuple[str, nn.Linear]]]] = []
    placed: set[str] = set()

    def make_hook(name: str, layer: nn.Linear):
        def hook(module, inp, out):
            if name in placed:
                return
            placed.add(name)
            x = inp[0]
            for tensor, group in seen:
                if tensor is x or (tensor.data_ptr() == x.data_ptr() and tensor.shape == x.shape):
                    group.append((name, layer))
                    return
            seen.append((x, [(name, layer)]))
        return hook

    handles = [layer.register_forward_hook(make_hook(name, layer)) for name, layer in layers]
    try:
        _run_block(block, item)
    finally:
        for h in handles:
            h.remove()
    groups = [group for _, group in seen]
    missing = [(name, layer) for name, layer in layers if name not in placed]
    if missing:   # never called on this batch: calibrate them last (prune_layer reports no tokens)
        groups.append(missing)
    return groups

"""The peft tuner layer of `SparseFTConfig`: sparseft's SparseDelta engine inside peft's layer API.

Per adapter name the layer holds

    sparseft_indices[name]   int64 buffer [k]: flat positions in the base weight W0 (saved)
    sparseft_values[name]    fp32 Parameter [k]: the deltas at those positions (saved, trained)

and nothing else is saved (peft saves every tensor of a tuner layer except `base_layer`), so an
adapter folder holds indices + values only. The forward pass of an nn.Linear base with one active
adapter is `sparseft.sft.layer._SparseLinearFn`, the same O(k) autograd function sparseft's own
training uses: it saves only the input and keeps only the k selected entries of the weight
gradient. Other weight-bearing modules (Embedding, transformers' Conv1D) use the generic path
(functional_call with W0 + delta), several active adapters add their deltas.

A layer is *pending* while its entries are not chosen yet (data-driven masks: fisher, lottery,
regrow with init="fisher"): k = 0 and the forward is the base module's. Training a pending
layer raises, so a run that forgot the `SparseFTCallback` fails instead of training nothing.

merge writes W0[idx] += values with `index_add_` (every other entry keeps its exact bits; the
same operation as `sparseft.sft.layer.merge_sparse_` and `apply_diff_`, hence bit-equal results)
and remembers W0[idx] (O(k)), so unmerge restores W0 bit for bit rather than subtracting.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge

from sparseft.sft.layer import _SparseLinearFn


class _Slot:
    """One adapter of one layer, shaped like `SparseDelta` for `sparseft.sft.regrow.RegrowHook`
    (`base`, `indices`, `values`, `acc_grad`); `_SparseLinearFn` reads `acc_grad` from it."""

    def __init__(self, layer: "SparseFTLayer", adapter: str) -> None:
        self._layer, self._adapter = layer, adapter
        self.acc_grad: torch.Tensor | None = None

    @property
    def base(self) -> nn.Module:
        return self._layer.get_base_layer()

    @property
    def indices(self) -> torch.Tensor:
        return self._layer.sparseft_indices[self._adapter]

    @property
    def values(self) -> nn.Parameter:
        return self._layer.sparseft_values[self._adapter]


class SparseFTLayer(nn.Module, BaseTunerLayer):
    """A frozen module plus, per adapter, trainable deltas at chosen entries of its `weight`.

    Args:
        base_layer: the module to adapt (needs a >= 2-D `weight`; nn.Linear gets the lean path).
        adapter_name: the first adapter; it starts pending (k = 0) until `set_indices`.
    """

    adapter_layer_names = ("sparseft_values",)
    other_param_names = ("sparseft_indices",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__()
        weight = getattr(base_layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
            raise TypeError(f"sparse fine-tuning targets modules with a 2-D weight; got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.sparseft_values = nn.ParameterDict({})
        self.sparseft_indices = BufferDict({}, persistent=True)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        self.pending: set[str] = set()               # adapters whose entries are not chosen yet
        self.selecting = False                         # True while a mask method runs the model
        self._slots: dict[str, _Slot] = {}
        self._merge_base: dict[str, torch.Tensor] = {}  # W0 at the indices, while merged
        self._active_adapter = adapter_name
        self.update_layer(adapter_name)

    # ---- adapters ---------------------------------------------------------------------------------

    def update_layer(self, adapter_name: str, inference_mode: bool = False, **kwargs) -> None:
        """Add `adapter_name` with no entries yet (pending)."""
        w = self.get_base_layer().weight
        self.sparseft_values[adapter_name] = nn.Parameter(torch.zeros(0, dtype=torch.float32, device=w.device))
        self.sparseft_indices[adapter_name] = torch.zeros(0, dtype=torch.long, device=w.device)
        self._slots[adapter_name] = _Slot(self, adapter_name)
        self.pending.add(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    @torch.no_grad()
    def set_indices(self, adapter_name: str, indices: torch.Tensor, values: torch.Tensor | None = None) -> None:
        """Tune the flat positions `indices` of W0 (deltas `values`, default 0). The value Parameter
        keeps its identity (its data is replaced), so an optimizer built before still holds it."""
        w = self.get_base_layer().weight
        idx = indices.to(device=w.device, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= w.numel()):
            raise ValueError(f"indices out of range for a weight of shape {tuple(w.shape)}")
        param = self.sparseft_values[adapter_name]
        new = torch.zeros(idx.numel(), dtype=torch.float32, device=w.device) if values is None else values
        param.data = new.to(device=w.device, dtype=torch.float32).reshape(-1).clone()
        self.sparseft_indices[adapter_name] = idx.clone()
        self.pending.discard(adapter_name)

    def slot(self, adapter_name: str) -> _Slot:
        return self._slots[adapter_name]

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._slots.pop(adapter_name, None)
        self.pending.discard(adapter_name)

    # ---- merge --------------------------------------------------------------------------------

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The dense delta (zeros except the k entries), in the base weight's dtype."""
        w = self.get_base_layer().weight
        flat = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
        flat.index_add_(0, self.sparseft_indices[adapter], self.sparseft_values[adapter].detach().to(w.dtype))
        return flat.view(w.shape)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """W0[idx] += values for each adapter (in place; every other entry keeps its bits)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        w = self.get_base_layer().weight
        for name in adapter_names:
            if name not in self.sparseft_values:
                continue
            idx, values = self.sparseft_indices[name], self.sparseft_values[name].detach().to(w.dtype)
            if safe_merge and not torch.isfinite(w.view(-1)[idx] + values).all():
                raise ValueError(f"NaN/inf in the merged weights; the adapter {name!r} seems to be broken")
            self._merge_base[name] = w.view(-1)[idx].clone()
            w.view(-1).index_add_(0, idx, values)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Write the remembered W0 entries back (bit-exact), last merged adapter first."""
        w = self.get_base_layer().weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            w.view(-1)[self.sparseft_indices[name]] = self._merge_base.pop(name)

    # ---- forward ------------------------------------------------------------------------------

    def _active(self) -> list[str]:
        names = [a for a in self.active_adapters if a in self.sparseft_values]
        if self.training and torch.is_grad_enabled() and not self.selecting and any(a in self.pending for a in names):
            raise RuntimeError(
                "sparse fine-tuning: the mask is not selected yet (data-driven mask); add "
                "sparseft.integrations.SparseFTCallback() to the Trainer's callbacks, or call "
                "sparseft.integrations.select_sparseft_masks_(model, batches=...) before training")
        return [a for a in names if self.sparseft_values[a].numel()]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = self._active()
        if not active:
            return self.base_layer(x, *args, **kwargs)
        base = self.get_base_layer()
        if isinstance(base, nn.Linear) and len(active) == 1 and not args and not kwargs:
            name = active[0]
            values, slot = self.sparseft_values[name], self._slots[name]
            if torch.is_grad_enabled() and (values.requires_grad or slot.acc_grad is not None):
                return _SparseLinearFn.apply(x, base.weight, base.bias, values, self.sparseft_indices[name], slot)
        w = base.weight
        flat = w.detach().reshape(-1)
        for name in active:  # differentiable in the values, W0 stays untouched
            flat = flat.index_add(0, self.sparseft_indices[name], self.sparseft_values[name].to(w.dtype))
        merged_w = flat.view(w.shape)
        if isinstance(base, nn.Linear):
            return F.linear(x, merged_w, base.bias)
        return torch.func.functional_call(base, {"weight": merged_w}, (x, *args), kwargs)

    def extra_repr(self) -> str:
        ks = {a: int(v.numel()) for a, v in self.sparseft_values.items()}
        return f"k={ks}, pending={sorted(self.pending)}"

    def __repr__(self) -> str:
        return "sparseft." + super().__repr__()


class SparseFTLinear(SparseFTLayer):
    """SparseFTLayer around an nn.Linear / Conv1D. The name matters: peft's "all-linear" target
    recognises already-adapted linear layers by "Linear" in the class name (for a second adapter)."""

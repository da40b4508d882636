"""`QuantLinear`: the weight-only quantized Linear that RTN, GPTQ, k-means and NF4 swap in.

Training code never sees this class: quantization is a module swap done after training (STYLE
note 8). The layer holds packed integer codes plus what turns them back into floats and
dequantizes the whole weight on every forward (no custom kernel), so it saves disk and memory,
not CPU time; dynamic int8 (`dynamic.py`) is the path for speed.

Buffers (all plain tensors, so `state_dict`, safetensors and `.to()` just work):
  qweight         uint8 [out, ceil(in * storage_bits / 8)]   packed codes (see pack.py)
  scale           f32   [R, G]   per-group scale (R = 1 per-tensor, else out), absent for k-means
  zero            uint8 [R, G]   asymmetric zero points (symmetric grids use 2^(bits-1))
  codebook        f16   [R, L]   code -> value table (k-means per row, NF4 shared with R = 1)
  outlier_index   int64 [k]      flat indices into [out, in] kept in full precision
  outlier_value   f32   [k]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparseft.compress.quantize.pack import expand_groups, pack_codes, storage_bits, unpack_codes
from sparseft.config.targets import TargetSpec, select_modules
from sparseft.utils.swaps import add_save_guard


class QuantLinear(nn.Module):
    """y = x W^T + b with W dequantized from codes on the fly.

    Args:
        in_features / out_features: the original Linear's shape.
        bits: code width (8, 4, ... ; codes are stored in 4 or 8 bits).
        group_size: inputs sharing one scale (in_features for per-channel / per-tensor).
        method: the quantizer that produced the codes ('rtn', 'gptq', 'kmeans', 'nf4'); metadata.
        symmetric: uniform grids only; True means zero = 2^(bits-1) and no `zero` buffer.
    """

    def __init__(self, in_features: int, out_features: int, *, bits: int, group_size: int, method: str,
                 symmetric: bool = True, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.method, self.symmetric = bits, group_size, method, symmetric
        packed_cols = (in_features * storage_bits(bits) + 7) // 8
        self.register_buffer("qweight", torch.zeros(out_features, packed_cols, dtype=torch.uint8))
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        for name in ("scale", "zero", "codebook", "outlier_index", "outlier_value"):
            self.register_buffer(name, None)
        add_save_guard(self)  # save_pretrained folders: see sparseft.utils.swaps

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_codes(cls, codes: torch.Tensor, *, bits: int, group_size: int, method: str,
                   bias: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                   zero: torch.Tensor | None = None, codebook: torch.Tensor | None = None,
                   symmetric: bool = True, outlier_index: torch.Tensor | None = None,
                   outlier_value: torch.Tensor | None = None) -> "QuantLinear":
        """Build from unpacked uint8 codes [out, in] and the tensors that decode them."""
        out, cols = codes.shape
        if scale is None and codebook is None:
            raise ValueError("a QuantLinear needs a scale (uniform grid) or a codebook")
        layer = cls(cols, out, bits=bits, group_size=group_size, method=method, symmetric=symmetric,
                    bias=bias)
        layer.qweight = pack_codes(codes, storage_bits(bits))
        layer.scale = scale.float().contiguous() if scale is not None else None
        layer.zero = zero.to(torch.uint8).contiguous() if (zero is not None and not symmetric) else None
        layer.codebook = codebook.to(torch.float16).contiguous() if codebook is not None else None
        if outlier_index is not None and outlier_index.numel():
            layer.outlier_index = outlier_index.long().contiguous()
            layer.outlier_value = outlier_value.float().contiguous()
        return layer

    @classmethod
    def empty_like_spec(cls, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "QuantLinear":
        """Rebuild from an export spec (see export/compressed.py) and its tensors (qweight may follow)."""
        layer = cls(spec["in_features"], spec["out_features"], bits=spec["bits"],
                    group_size=spec["group_size"], method=spec["method"], symmetric=spec["symmetric"],
                    bias=tensors.get("bias"))
        for name in ("qweight", "scale", "zero", "codebook", "outlier_index", "outlier_value"):
            if name in tensors:
                setattr(layer, name, tensors[name])
        return layer

    # ------------------------------------------------------------------ decoding
    def codes(self) -> torch.Tensor:
        """Unpacked uint8 codes [out, in]."""
        return unpack_codes(self.qweight, storage_bits(self.bits), self.in_features)

    def zero_code(self) -> torch.Tensor:
        """uint8 [R, G] (or [R, 1]): per row/group the code of the value closest to 0 (exactly 0
        on every uniform grid, and in codebooks that have a 0 level: NF4, pruned k-means)."""
        if self.codebook is not None:
            return self.codebook.float().abs().argmin(-1, keepdim=True).to(torch.uint8)   # [R, 1]
        if self.zero is not None:
            return self.zero
        return torch.full((1, 1), 2 ** (self.bits - 1), dtype=torch.uint8)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] these codes stand for."""
        codes = self.codes()
        gs, cols = self.group_size, self.in_features
        if self.codebook is not None:
            cb = self.codebook.float()                                       # [R, L]
            w = cb[0][codes.long()] if cb.shape[0] == 1 else torch.gather(cb, 1, codes.long())
            if self.scale is not None:
                w = w * expand_groups(self.scale, gs, cols)
        else:
            zero = (expand_groups(self.zero.float(), gs, cols) if self.zero is not None
                    else float(2 ** (self.bits - 1)))
            w = (codes.float() - zero) * expand_groups(self.scale, gs, cols)
        if self.outlier_index is not None:
            w = w.reshape(-1).index_copy(0, self.outlier_index, self.outlier_value).reshape(w.shape)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def spec(self) -> dict[str, Any]:
        """JSON-able description used by the compressed export."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "group_size": self.group_size, "method": self.method, "symmetric": self.symmetric}

    swap_spec = spec  # recorded in config.json by sparseft.utils.swaps.record_swaps_

    def extra_repr(self) -> str:
        kind = "codebook" if self.codebook is not None else ("sym" if self.symmetric else "asym")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, {kind}, method={self.method}")


class QuantEmbedding(nn.Module):
    """Embedding table with uniform integer codes per row: only the looked-up rows are decoded.

    Buffers as QuantLinear (qweight [num, packed], scale [num, G], zero [num, G] or None); rows are
    token vectors, groups run along the embedding dimension.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, bits: int, group_size: int,
                 method: str = "rtn", symmetric: bool = True, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.bits, self.group_size, self.method, self.symmetric = bits, group_size, method, symmetric
        self.padding_idx = padding_idx
        packed_cols = (embedding_dim * storage_bits(bits) + 7) // 8
        self.register_buffer("qweight", torch.zeros(num_embeddings, packed_cols, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(num_embeddings, 1))
        self.register_buffer("zero", None)
        add_save_guard(self)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, *, bits: int, group_size: int, scale: torch.Tensor,
                   zero: torch.Tensor | None, symmetric: bool, method: str = "rtn",
                   padding_idx: int | None = None) -> "QuantEmbedding":
        num, dim = codes.shape
        layer = cls(num, dim, bits=bits, group_size=group_size, method=method, symmetric=symmetric,
                    padding_idx=padding_idx)
        layer.qweight = pack_codes(codes, storage_bits(bits))
        layer.scale = scale.float().expand(num, -1).contiguous()            # per-tensor -> per row
        layer.zero = zero.to(torch.uint8).expand(num, -1).contiguous() if not symmetric else None
        return layer

    @classmethod
    def empty_like_spec(cls, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "QuantEmbedding":
        layer = cls(spec["num_embeddings"], spec["embedding_dim"], bits=spec["bits"],
                    group_size=spec["group_size"], method=spec["method"], symmetric=spec["symmetric"],
                    padding_idx=spec.get("padding_idx"))
        for name in ("qweight", "scale", "zero"):
            if name in tensors:
                setattr(layer, name, tensors[name])
        return layer

    def _decode(self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        codes = unpack_codes(packed, storage_bits(self.bits), self.embedding_dim)   # [N, dim]
        gs, dim = self.group_size, self.embedding_dim
        z = expand_groups(zero.float(), gs, dim) if zero is not None else float(2 ** (self.bits - 1))
        return (codes.float() - z) * expand_groups(scale, gs, dim)

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.qweight, storage_bits(self.bits), self.embedding_dim)

    def zero_code(self) -> torch.Tensor:
        return self.zero if self.zero is not None else torch.full((1, 1), 2 ** (self.bits - 1), dtype=torch.uint8)

    def dequantize(self) -> torch.Tensor:
        return self._decode(self.qweight, self.scale, self.zero)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        zero = self.zero[flat] if self.zero is not None else None
        rows = self._decode(self.qweight[flat], self.scale[flat], zero)          # [N, dim]
        return rows.to(self.scale.dtype).reshape(*ids.shape, self.embedding_dim)  # the model's dtype

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "bits": self.bits,
                "group_size": self.group_size, "method": self.method, "symmetric": self.symmetric,
                "padding_idx": self.padding_idx}

    swap_spec = spec

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group_size={self.group_size}, "
                f"{'sym' if self.symmetric else 'asym'}")


def target_modules(model: nn.Module, targets: list[str], ignore: list[str], types: tuple[type, ...]
                   ) -> list[tuple[str, nn.Module]]:
    """[(fqn, module)] selected by targets/ignore among modules of `types` (error if none)."""
    return select_modules(model, TargetSpec(targets=targets, ignore=ignore),
                          filter_fn=lambda module, fqn: isinstance(module, types))


def shared_weight_users(model: nn.Module, weight: torch.Tensor) -> list[str]:
    """Names under which `weight` appears in the model (more than one: it is tied)."""
    return [n for n, p in model.named_parameters(remove_duplicate=False) if p is weight]


def target_linears(model: nn.Module, targets: list[str], ignore: list[str]) -> list[tuple[str, nn.Linear]]:
    """[(fqn, nn.Linear)] selected by targets/ignore; only real Linear layers count (error if none)."""
    return select_modules(model, TargetSpec(targets=targets, ignore=ignore),
                          filter_fn=lambda module, fqn: isinstance(module, nn.Linear))


def set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Replace the submodule at `fqn` by `new`."""
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def check_targets(targets: list[str], ignore: list[str]) -> None:
    """Validate target/ignore patterns at config time (regexes compile, targets not empty)."""
    TargetSpec(targets=targets, ignore=ignore)


def default_ignore() -> list[str]:
    """Task heads stay in full precision: they are small and lm_head is often tied to embeddings."""
    return ["classifier", "lm_head", "score"]


def quantized_summary(model: nn.Module) -> dict:
    """Counts of quantized layers by method and the bytes their codes + side tensors take."""
    from sparseft.compress.quantize.dynamic import DynamicInt8Linear  # local: avoid a cycle
    from sparseft.compress.quantize.static import StaticInt8Linear

    counts: dict[str, int] = {}
    nbytes, weights = 0, 0
    for module in model.modules():
        if isinstance(module, (QuantLinear, QuantEmbedding, DynamicInt8Linear, StaticInt8Linear)):
            name = ("dynamic_int8" if isinstance(module, DynamicInt8Linear) else
                    "static_int8" if isinstance(module, StaticInt8Linear) else module.method)
            name += "_embedding" if isinstance(module, QuantEmbedding) else ""
            counts[name] = counts.get(name, 0) + 1
            shape = ((module.num_embeddings, module.embedding_dim) if isinstance(module, QuantEmbedding)
                     else (module.out_features, module.in_features))
            weights += shape[0] * shape[1]
            nbytes += sum(b.numel() * b.element_size() for b in module.buffers())
    return {"quantized_layers": counts, "quantized_weights": weights,
            "quantized_mb": nbytes / 2**20, "bits_per_weight": 8 * nbytes / weights if weights else 0.0}

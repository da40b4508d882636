"""Compressed checkpoint: sparse weights as bitmask + nonzero values, quantized weights as packed
integers + scales (+ zero points / codebooks), in one safetensors file plus a JSON config.

    stats = export_compressed(model, "out/minilm-int8", tokenizer=tok)   # {"weights_bytes", ...}
    model = load_compressed("out/minilm-int8")                            # a working model again

Folder layout:
  config.json              the transformers model config (architecture, sizes, labels)
  compression_config.json  format version, architecture, one entry per stored tensor and per
                           quantized module, plus summaries under compressed-tensors' keys
                           (`quantization_config`, `sparsity_config` with `format`,
                           `global_sparsity`, `sparsity_structure`, `config_groups` ...)
  model.safetensors        the tensors
  tokenizer files          when a tokenizer is given

Tensor names reuse compressed-tensors' where the meaning matches: a quantized layer stores
`<fqn>.weight_packed` (uint8 codes, two 4-bit codes per byte, low nibble first, or one 8-bit
code per byte), `<fqn>.weight_scale`, `<fqn>.weight_zero_point` and our `<fqn>.weight_codebook`
/ `weight_outlier_*`; dynamic int8 layers store int8 `<fqn>.weight_int8` + `<fqn>.weight_scale`,
static int8 layers the same plus their calibrated `<fqn>.input_range` (f32 [2]) and, when
smoothed, `<fqn>.input_smooth` (f32 [in]). A
tensor stored as a bitmask becomes `<name>.bitmask` (uint8 [rows, ceil(cols/8)], LSB first)
plus `<name>.compressed` (the entries that are not zero, row-major; for integer codes "zero"
is the code that decodes to 0, which is then restored on load). The byte layouts are ours
(compressed-tensors packs int4 into int32 and adds row_offsets). `layout` (export/compressed_layout.py)
decides what config.json says: where compressed-tensors can express the model (symmetric int8 /
int4 QuantLinear layers, no bitmask tensors) the quantized layers are written in its
pack-quantized format instead, so plain transformers + compressed-tensors loads the folder;
otherwise `from_pretrained` refuses it loudly and `load_compressed` / `sparseft.load` read it.
Format 2 stores dynamic int8 codes as `<fqn>.weight_int8` (format 1: `<fqn>.weight`); format 3
(this writer) adds static int8 layers and `kernel_version` in dynamic entries ("onednn" in older
folders means the per-tensor kernel, now "onednn_tensor"). Formats 1 and 2 still load.

`sparse="auto"` stores a 2-D tensor as a bitmask only where that is smaller: with b-bit values
that is below a density of 1 - 1/b (87.5% for int8, 75% for int4, 97% for fp32).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sparseft.compress.quantize.dynamic import DynamicInt8Linear, resolve_backend, stored_backend
from sparseft.compress.quantize.layers import QuantEmbedding, QuantLinear, set_module
from sparseft.compress.quantize.static import StaticInt8Linear
from sparseft.compress.quantize.pack import (expand_groups, pack_bitmask, pack_codes, storage_bits,
                                             unpack_bitmask, unpack_codes)
from sparseft.utils.io import atomic_write_json, dir_size_bytes
from sparseft.utils.outdir import replace_dir

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
INT8 = (DynamicInt8Linear, StaticInt8Linear)  # int8 codes + per-channel scales, stored as they are
CONFIG_NAME = "compression_config.json"
WEIGHTS_NAME = "model.safetensors"
SPARSE_MODES = ("auto", "always", "never")
FLOAT_DTYPES = {"keep": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
# module attribute -> stored tensor suffix (compressed-tensors names where they exist)
_QUANT_NAMES = {"qweight": "weight_packed", "scale": "weight_scale", "zero": "weight_zero_point",
                "codebook": "weight_codebook", "outlier_index": "weight_outlier_index",
                "outlier_value": "weight_outlier_value", "bias": "bias"}
_DYN_NAMES = {"weight_int8": "weight_int8", "weight_scale": "weight_scale", "input_range": "input_range",
              "input_smooth": "input_smooth", "bias": "bias"}


def _full_zero_code(module, rows: int, cols: int) -> torch.Tensor:
    """uint8 [rows, cols]: per entry, the code that decodes to 0 for its row/group."""
    zc = module.zero_code()                                                   # [R, G] or [R, 1]
    if zc.shape[1] > 1:
        zc = expand_groups(zc, module.group_size, cols)                       # [R, cols]
    return zc.expand(rows, cols)


def _logical_shape(module) -> tuple[int, int]:
    if isinstance(module, QuantEmbedding):
        return module.num_embeddings, module.embedding_dim
    return module.out_features, module.in_features


class _Writer:
    """Collects stored tensors and their JSON entries, choosing dense or bitmask per tensor."""

    def __init__(self, sparse: str, float_dtype: torch.dtype | None) -> None:
        self.sparse, self.float_dtype = sparse, float_dtype
        self.tensors: dict[str, torch.Tensor] = {}
        self.entries: dict[str, dict] = {}
        self.zeros = self.entries_2d = 0

    def _pays(self, shape: tuple[int, ...], nnz: int, value_bits: int) -> bool:
        if self.sparse == "never" or len(shape) != 2:
            return False
        if self.sparse == "always":
            return True
        rows, cols = shape
        dense = rows * math.ceil(cols * value_bits / 8)
        sparse = rows * math.ceil(cols / 8) + math.ceil(nnz * value_bits / 8)
        return sparse < dense

    def add_float(self, name: str, t: torch.Tensor, *, cast: bool = True) -> None:
        """A plain tensor (any dtype); `cast`: apply float_dtype (not for scales / codebooks)."""
        t = t.detach().cpu()
        if cast and t.is_floating_point() and self.float_dtype is not None:
            t = t.to(self.float_dtype)
        mask = t != 0
        if t.ndim == 2 and t.is_floating_point():
            self.zeros += int((~mask).sum())
            self.entries_2d += t.numel()
        if t.is_floating_point() and self._pays(tuple(t.shape), int(mask.sum()), 8 * t.element_size()):
            self.tensors[f"{name}.bitmask"] = pack_bitmask(mask)
            self.tensors[f"{name}.compressed"] = t[mask].contiguous()
            self.entries[name] = {"format": "sparse-bitmask", "shape": list(t.shape), "dtype": str(t.dtype)}
        else:
            self.tensors[name] = t.contiguous()
            self.entries[name] = {"format": "dense", "shape": list(t.shape), "dtype": str(t.dtype)}

    def add_codes(self, name: str, codes: torch.Tensor, zero_code: torch.Tensor, bits: int) -> None:
        """Integer codes [rows, cols] (uint8 or int8) with per-entry zero codes of the same shape."""
        codes = codes.cpu()
        mask = codes != zero_code.cpu()
        self.zeros += int((~mask).sum())
        self.entries_2d += codes.numel()
        fmt = "sparse-bitmask" if self._pays(tuple(codes.shape), int(mask.sum()), bits) else "dense"
        signed = codes.dtype == torch.int8
        if fmt == "sparse-bitmask":
            values = codes[mask].unsqueeze(0)                                  # [1, nnz]
            self.tensors[f"{name}.bitmask"] = pack_bitmask(mask)
            self.tensors[f"{name}.compressed"] = values.contiguous() if signed else pack_codes(values, bits)
            nnz = int(mask.sum())
        else:
            self.tensors[name] = codes.contiguous() if signed else pack_codes(codes, bits)
            nnz = None
        self.entries[name] = {"format": fmt, "shape": list(codes.shape), "dtype": str(codes.dtype),
                              "bits": bits, "nnz": nnz}


def _quant_module_entry(module) -> dict:
    if isinstance(module, INT8):
        return {"type": type(module).__name__, "format": "int-quantized", **module.swap_spec()}
    kind = "QuantEmbedding" if isinstance(module, QuantEmbedding) else "QuantLinear"
    fmt = "pack-quantized" if storage_bits(module.bits) == 4 else "int-quantized"
    if getattr(module, "codebook", None) is not None:
        fmt = "codebook-quantized"
    return {"type": kind, "format": fmt, **module.spec()}


def _strategy(module) -> str:
    scale = getattr(module, "scale", None)
    if isinstance(module, INT8) or scale is None:
        return "channel"
    if scale.shape == (1, 1):
        return "tensor"
    cols = module.embedding_dim if isinstance(module, QuantEmbedding) else module.in_features
    return "channel" if module.group_size >= cols else "group"


def _config_groups(modules: dict[str, dict], model: nn.Module) -> dict:
    """compressed-tensors style `config_groups`: one group per distinct weight scheme."""
    groups: dict[str, dict] = {}
    for fqn, entry in modules.items():
        module = model.get_submodule(fqn)
        int8 = entry["type"] in ("DynamicInt8Linear", "StaticInt8Linear")
        weights = {"num_bits": 8 if int8 else entry["bits"],
                   "type": "codebook" if entry["format"] == "codebook-quantized" else "int",
                   "symmetric": True if int8 else entry["symmetric"], "strategy": _strategy(module),
                   "group_size": None if int8 else entry["group_size"], "dynamic": False,
                   "observer": "minmax" if int8 else entry["method"]}
        acts = None
        if entry["type"] == "DynamicInt8Linear":
            acts = {"num_bits": 8, "type": "int", "dynamic": True, "symmetric": module.backend != "onednn_tensor",
                    "strategy": "tensor" if module.backend in ("onednn_tensor", "fbgemm") else "token"}
        elif int8:
            acts = {"num_bits": 8, "type": "int", "dynamic": False, "strategy": "tensor",
                    "symmetric": module.backend != "onednn"}
        key = json.dumps([weights, acts], sort_keys=True)
        groups.setdefault(key, {"targets": [], "weights": weights, "input_activations": acts})
        groups[key]["targets"].append(fqn)
    return {f"group_{i}": g for i, g in enumerate(groups.values())}


@torch.no_grad()
def export_compressed(model: nn.Module, directory: str | Path, *, tokenizer=None, sparse: str = "auto",
                      float_dtype: str = "keep", overwrite: bool = False, owner: str | None = None,
                      layout: str = "auto") -> dict[str, Any]:
    """Write `model` as a compressed checkpoint folder (replaced atomically); returns size stats.

    Args:
        model: a transformers model, dense, pruned and/or quantized (QuantLinear, QuantEmbedding,
            DynamicInt8Linear, StaticInt8Linear layers).
        tokenizer: saved alongside when given.
        sparse: 'auto' (bitmask where smaller), 'always' (every 2-D tensor) or 'never'.
        float_dtype: 'keep', 'float16' or 'bfloat16' for the tensors that are not quantized.
        overwrite / owner: a non-empty folder sparseft did not write is refused unless
            overwrite=True (see `sparseft.utils.outdir`).
        layout: 'auto', 'compressed-tensors' or 'sparseft' (see export/compressed_layout.py).
    Returns:
        {"path", "weights_bytes", "size_bytes", "fp32_bytes", "compression_ratio",
         "global_sparsity", "quantized_modules", "sparse_tensors"}; fp32_bytes is 4 bytes per
        logical weight (what an fp32 safetensors checkpoint of the same model takes, less headers).
    """
    from safetensors.torch import save_file

    from sparseft.export.compressed_layout import (LAYOUTS, check_exportable, choose_layout, layout_quant_config,
                                                   layout_tensors, write_model_config)
    from sparseft.utils.swaps import GUARD

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if sparse not in SPARSE_MODES:
        raise ValueError(f"sparse must be one of {SPARSE_MODES}, got {sparse!r}")
    if float_dtype not in FLOAT_DTYPES:
        raise ValueError(f"float_dtype must be one of {tuple(FLOAT_DTYPES)}, got {float_dtype!r}")
    if not hasattr(model, "config"):
        raise ValueError("export_compressed needs a transformers model (with .config)")
    check_exportable(model, (QuantLinear, QuantEmbedding, *INT8))
    writer = _Writer(sparse, FLOAT_DTYPES[float_dtype])
    modules: dict[str, dict] = {}
    covered: set[str] = set()
    fp32_bytes = 0
    for fqn, module in model.named_modules():
        if not isinstance(module, (QuantLinear, QuantEmbedding, *INT8)):
            continue
        modules[fqn] = _quant_module_entry(module)
        covered.add(f"{fqn}.{GUARD}")  # the empty save guard of swapped modules (utils/swaps.py)
        names = _DYN_NAMES if isinstance(module, INT8) else _QUANT_NAMES
        for attr, tensor in [*module.named_buffers(recurse=False), *module.named_parameters(recurse=False)]:
            covered.add(f"{fqn}.{attr}")
            name = f"{fqn}.{names[attr]}"
            if attr == "weight_int8":
                writer.add_codes(name, tensor, torch.zeros_like(tensor), 8)
            elif attr == "qweight":
                codes = module.codes()
                writer.add_codes(name, codes, _full_zero_code(module, *codes.shape), storage_bits(module.bits))
            else:
                writer.add_float(name, tensor, cast=False)
        rows, cols = _logical_shape(module)
        bias = getattr(module, "bias", None)
        fp32_bytes += 4 * (rows * cols + (bias.numel() if bias is not None else 0))
    seen: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name in covered:
            continue
        key = id(tensor)
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        writer.add_float(name, tensor)
        fp32_bytes += tensor.numel() * (4 if tensor.is_floating_point() else tensor.element_size())
    sparse_tensors = sum(e["format"] == "sparse-bitmask" for e in writer.entries.values())
    global_sparsity = writer.zeros / writer.entries_2d if writer.entries_2d else 0.0
    chosen = choose_layout(model, layout, writer.entries, modules)
    meta = {
        "format_version": FORMAT_VERSION, "producer": "sparseft", "architecture": type(model).__name__,
        "layout": chosen,
        "tensors": writer.entries, "modules": modules, "tied": tied,
        "quantization_config": ({"quant_method": "sparseft", "quantization_status": "compressed",
                                 "format": sorted({m["format"] for m in modules.values()}),
                                 "config_groups": _config_groups(modules, model)} if modules else None),
        "sparsity_config": {"format": "sparse-bitmask" if sparse_tensors else "dense",
                            "global_sparsity": global_sparsity, "sparsity_structure": "unstructured",
                            "targets": sorted(n for n, e in writer.entries.items() if e["format"] == "sparse-bitmask"),
                            "ignore": []},
    }
    directory = Path(directory)
    with replace_dir(directory, owner=owner, overwrite=overwrite) as tmp:
        write_model_config(model, tmp, layout_quant_config(model, chosen))
        save_file(layout_tensors(model, chosen, writer.tensors, writer.entries, modules), str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt", "producer": "sparseft"})
        atomic_write_json(tmp / CONFIG_NAME, meta)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        from sparseft.export.artifact_cards import write_folder_card

        write_folder_card(tmp, model, layout=chosen, where=str(directory),
                          extra={"quantized modules": len(modules), "bitmask tensors": sparse_tensors,
                                 "global sparsity": round(global_sparsity, 4)})
    weights_bytes = (directory / WEIGHTS_NAME).stat().st_size
    return {"path": str(directory), "weights_bytes": weights_bytes, "size_bytes": dir_size_bytes(directory),
            "fp32_bytes": fp32_bytes, "compression_ratio": fp32_bytes / weights_bytes,
            "global_sparsity": global_sparsity, "quantized_modules": len(modules), "sparse_tensors": sparse_tensors,
            "layout": chosen}


def _decode(name: str, entry: dict, stored: dict[str, torch.Tensor], zero_code: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Inverse of the writer for one tensor: dense values, or codes (uint8 unpacked / int8)."""
    shape = tuple(entry["shape"])
    dtype = getattr(torch, entry["dtype"].removeprefix("torch."))
    bits = entry.get("bits")
    if entry["format"] == "dense":
        t = stored[name]
        return unpack_codes(t, bits, shape[1]) if bits is not None and dtype == torch.uint8 else t
    if entry["format"] != "sparse-bitmask":
        raise ValueError(f"{name}: unknown tensor format {entry['format']!r}")
    mask = unpack_bitmask(stored[f"{name}.bitmask"], shape[1])                # [rows, cols] bool
    values = stored[f"{name}.compressed"]
    if bits is not None and dtype == torch.uint8:
        values = unpack_codes(values, bits, entry["nnz"])[0]
        out = zero_code.clone()
    else:
        values = values.reshape(-1)
        out = torch.zeros(shape, dtype=values.dtype)
    out[mask] = values
    return out


def _build_quant_module(fqn: str, entry: dict, meta: dict, stored: dict[str, torch.Tensor]) -> nn.Module:
    def get(suffix: str) -> torch.Tensor | None:
        name = f"{fqn}.{suffix}"
        return _decode(name, meta["tensors"][name], stored) if name in meta["tensors"] else None

    if entry["type"] in ("DynamicInt8Linear", "StaticInt8Linear"):
        static = entry["type"] == "StaticInt8Linear"
        backend = entry.get("backend", "auto") if static else stored_backend(entry)
        try:
            resolve_backend(backend)
        except ValueError:
            warnings.warn(f"{fqn}: int8 backend {backend!r} is unavailable here; using 'auto'", RuntimeWarning,
                          stacklevel=3)
            backend = "auto"
        extra = {"smooth": entry.get("smooth", False)} if static else {}
        cls = StaticInt8Linear if static else DynamicInt8Linear
        layer = cls(entry["in_features"], entry["out_features"], bias=entry["bias"], backend=backend, **extra)
        layer.weight_int8.copy_(get("weight_int8" if meta["format_version"] >= 2 else "weight"))
        layer.weight_scale.copy_(get("weight_scale"))
        if static:
            layer.input_range.copy_(get("input_range"))
            if layer.input_smooth is not None:
                layer.input_smooth.copy_(get("input_smooth"))
        if layer.bias is not None:
            layer.bias.copy_(get("bias"))
        return layer
    cls = QuantEmbedding if entry["type"] == "QuantEmbedding" else QuantLinear
    side = {attr: get(suffix) for attr, suffix in _QUANT_NAMES.items() if attr != "qweight"}
    side = {k: (v.float() if k in ("scale", "outlier_value", "bias") else v) for k, v in side.items() if v is not None}
    layer = cls.empty_like_spec(entry, side)
    name = f"{fqn}.weight_packed"
    info = meta["tensors"][name]
    rows, cols = info["shape"]
    codes = _decode(name, info, stored, zero_code=_full_zero_code(layer, rows, cols).contiguous())
    layer.qweight = pack_codes(codes, storage_bits(layer.bits))
    return layer


@torch.no_grad()
def load_compressed(directory: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model written by `export_compressed` (quantized layers stay quantized).

    The architecture class named in compression_config.json is built from config.json (so
    structurally pruned sizes recorded in the config come back), quantized modules are swapped in
    and every other tensor is loaded; a missing or unexpected tensor is an error.
    """
    import transformers

    from sparseft.utils.tensorfile import load_tensors

    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.exists():
        raise FileNotFoundError(f"{directory} is not a compressed checkpoint: no {CONFIG_NAME}")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"{cfg_path}: format_version {meta.get('format_version')!r} is not supported "
                         f"(this sparseft reads {READABLE_VERSIONS})")
    arch = getattr(transformers, meta["architecture"], None)
    if arch is None:
        raise ValueError(f"architecture {meta['architecture']!r} is not a transformers class")
    config = transformers.AutoConfig.from_pretrained(directory)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # the layout's loader entry; the model built here is described anew
    model = arch(config)
    stored = load_tensors(directory / WEIGHTS_NAME)  # one-line error naming a truncated file
    if meta.get("layout") == "compressed-tensors":
        from sparseft.export.compressed_tensors import to_sparseft_tensors

        stored = to_sparseft_tensors(stored, meta)
    for fqn, entry in meta["modules"].items():
        set_module(model, fqn, _build_quant_module(fqn, entry, meta, stored))
    quant_prefixes = tuple(f"{fqn}." for fqn in meta["modules"])
    state = {}
    for name, entry in meta["tensors"].items():
        if not name.startswith(quant_prefixes):
            state[name] = _decode(name, entry, stored)
    expected = {k for k in model.state_dict() if not k.startswith(quant_prefixes)}
    missing = sorted(expected - set(state) - set(meta.get("tied", {})))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{directory}: checkpoint does not match {meta['architecture']} built from config.json; "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
    current = model.state_dict(keep_vars=True)
    for alias, source in meta.get("tied", {}).items():  # tied when exported; usually tied again here
        if alias in current and source in state and current[alias] is not current.get(source):
            current[alias].data.copy_(state[source])
    from sparseft.utils.swaps import record_swaps_

    record_swaps_(model)  # save_pretrained of the loaded model then reloads right (utils/swaps.py)
    return model.to(device).eval()

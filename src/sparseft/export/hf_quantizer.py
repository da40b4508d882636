"""The transformers quantizer for sparseft folders: `from_pretrained` rebuilds swapped modules.

Registered under quant_method "sparseft" (`register()`, run when transformers' quantizer registry
is imported after `import sparseft`, see sparseft/hf_registration.py). A folder's config.json
says which modules were swapped (utils/swaps.py writes it):

    "quantization_config": {"quant_method": "sparseft", "format_version": 1, "layout": "modules",
                            "modules": {"bert.encoder.layer.0.attention.self.query":
                                        {"type": "QuantLinear", "bits": 4, "group_size": 16, ...}}}

Layouts:
  * "modules" (what `save_pretrained` writes after `quantize_` or while `SparseDelta` wrappers
    are in place): the tensors are the modules' own state dict. Before the weights load, the
    quantizer replaces each listed module by an empty `QuantLinear` / `QuantEmbedding` /
    `DynamicInt8Linear` (buffer shapes read from the safetensors header) or wraps it in a
    `SparseDelta`; transformers then fills them, so the loaded model computes what the saved one
    did. The empty guard tensors (`<fqn>.weight`) are marked as expected-unused.
  * "compressed" (export_compressed's bitmask / packed storage, export/compressed.py): tensors
    are encoded, so `from_pretrained` refuses with a message naming `sparseft.load` /
    `load_compressed`, which decode them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn
from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                          register_quantization_config, register_quantizer)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from sparseft.utils.swaps import FORMAT_VERSION, GUARD, QUANT_METHOD

LAYOUTS = ("modules", "compressed")


class SparseftQuantConfig(QuantizationConfigMixin):
    """quantization_config of a sparseft folder (see module docstring)."""

    def __init__(self, modules: dict | None = None, format_version: int = FORMAT_VERSION, layout: str = "modules",
                 **kwargs) -> None:
        self.quant_method = QUANT_METHOD
        self.modules = dict(modules or {})
        self.format_version = format_version
        self.layout = layout
        self.extra = {k: v for k, v in kwargs.items() if k != "quant_method"}

    def to_dict(self) -> dict:
        return {"quant_method": QUANT_METHOD, "format_version": self.format_version, "layout": self.layout,
                "modules": self.modules, **self.extra}

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


_DTYPES = {"U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "F16": "float16",
           "BF16": "bfloat16", "F32": "float32", "F64": "float64", "BOOL": "bool"}


def _header_shapes(checkpoint_files) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{tensor name: (shape, dtype)} from the safetensors headers (no tensor data read)."""
    from safetensors import safe_open

    out = {}
    for path in checkpoint_files or []:
        if not str(path).endswith(".safetensors"):
            raise ValueError(f"{path}: sparseft folders are read from safetensors files only")
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as exc:  # SafetensorError on a truncated / corrupt header
            raise ValueError(f"{path}: not a readable safetensors file ({exc}); the folder is damaged, "
                             f"save or export it again") from None
        with handle as f:
            for name in f.keys():
                sl = f.get_slice(name)
                dtype = _DTYPES.get(sl.get_dtype())
                if dtype is None:
                    raise ValueError(f"{path}: tensor {name!r} has dtype {sl.get_dtype()}, which sparseft layers "
                                     f"do not use")
                out[name] = (tuple(sl.get_shape()), getattr(torch, dtype))
    return out


def _empty(shapes: dict, name: str, *, required: bool = True) -> torch.Tensor | None:
    if name not in shapes:
        if required:
            raise ValueError(f"sparseft checkpoint: tensor {name!r} listed in config.json is missing from the weights")
        return None
    shape, dtype = shapes[name]
    return torch.empty(shape, dtype=dtype)


def build_module(fqn: str, spec: dict, current: nn.Module, shapes: dict) -> nn.Module:
    """An empty module of `spec['type']` with buffers shaped as stored (filled by the loader)."""
    from sparseft.compress.quantize.dynamic import DynamicInt8Linear
    from sparseft.compress.quantize.layers import QuantEmbedding, QuantLinear
    from sparseft.sft.layer import SparseDelta

    kind = spec.get("type")
    if kind == "SparseDelta":
        current.weight.requires_grad_(False)
        return SparseDelta(current, torch.empty(int(spec["k"]), dtype=torch.long))
    if kind == "DynamicInt8Linear":
        return DynamicInt8Linear.from_spec(spec)  # old specs: "onednn" meant per-tensor
    if kind not in ("QuantLinear", "QuantEmbedding"):
        return _build_by_protocol(fqn, spec, current, shapes)
    cls = QuantLinear if kind == "QuantLinear" else QuantEmbedding
    tensors = {}
    for name in ("qweight", "scale", "zero", "codebook", "outlier_index", "outlier_value", "bias"):
        t = _empty(shapes, f"{fqn}.{name}", required=name == "qweight")
        if t is not None:
            tensors[name] = t
    return cls.empty_like_spec(spec, tensors)


def _build_by_protocol(fqn: str, spec: dict, current: nn.Module, shapes: dict) -> nn.Module:
    """Other swapped classes (utils/swaps.py protocol): `from_swap_spec` or `Cls(**spec)`."""
    import importlib

    path = str(spec.get("class", ""))
    module_name, _, cls_name = path.rpartition(".")
    if not module_name.startswith("sparseft."):
        raise ValueError(f"sparseft checkpoint: module {fqn!r} has type {spec.get('type')!r} without a sparseft "
                         f"class to rebuild it (written by a newer sparseft?)")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError):
        raise ValueError(f"sparseft checkpoint: module {fqn!r} needs {path}, which this sparseft does not have "
                         f"(written by a newer sparseft?)") from None
    args = {k: v for k, v in spec.items() if k not in ("type", "class")}
    if hasattr(cls, "from_swap_spec"):
        local = {name[len(fqn) + 1:]: v for name, v in shapes.items() if name.startswith(f"{fqn}.")}
        return cls.from_swap_spec(args, current, local)
    return cls(**args)


def _model_fqn(model: nn.Module, fqn: str) -> str:
    """`fqn` as named in `model`: a head model's checkpoint loaded into its base model drops the
    base prefix (`bert.`), a base checkpoint loaded into a head model gains it (as transformers
    renames the weights)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    for candidate in (fqn, fqn.removeprefix(f"{prefix}.") if prefix else fqn, f"{prefix}.{fqn}" if prefix else fqn):
        try:
            model.get_submodule(candidate)
            return candidate
        except AttributeError:
            continue
    raise ValueError(f"sparseft checkpoint: config.json lists module {fqn!r}, which {type(model).__name__} "
                     f"does not have")


def _set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


class SparseftHfQuantizer(HfQuantizer):
    """Loads pre-quantized sparseft folders (layout 'modules'); refuses encoded ones with a message."""

    requires_calibration = True  # only pre-quantized folders: quantize with sparseft's quantize_
    quantization_config: SparseftQuantConfig

    def validate_environment(self, *args, **kwargs) -> None:
        cfg = self.quantization_config
        if cfg.format_version != FORMAT_VERSION:
            raise ValueError(f"this sparseft folder has format_version {cfg.format_version!r}; this sparseft reads "
                             f"{FORMAT_VERSION}")
        if cfg.layout == "compressed":
            raise ValueError("this is a sparseft compressed checkpoint (bitmask / packed tensors): load it with "
                             "`sparseft.load(DIR, task)` or `sparseft.export.compressed.load_compressed(DIR)`, "
                             "or use it with `sparseft eval DIR`")
        if cfg.layout not in LAYOUTS:
            raise ValueError(f"unknown sparseft layout {cfg.layout!r}; valid: {LAYOUTS}")
        from sparseft.compress.quantize.dynamic import onednn_available

        onednn_available()  # probe the kernel now, on real tensors (the skeleton is built on meta)

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        shapes = _header_shapes(checkpoint_files)
        ignore = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])
        for fqn, spec in self.quantization_config.modules.items():
            target = _model_fqn(model, fqn)
            # shapes are looked up under the checkpoint's name, the module is set under the model's
            module = build_module(fqn, spec, model.get_submodule(target), shapes)
            _set_module(model, target, module)
            # a module may guard more names than `weight` (`save_guards`, e.g. ExpertFFN's `down_proj.weight`)
            for key in (GUARD, *getattr(module, "save_guards", ())):
                ignore.add(rf"(^|\.){re.escape(target)}\.{re.escape(key)}$")
        model._keys_to_ignore_on_load_unexpected = ignore
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        from sparseft.utils.swaps import add_save_guard

        for fqn in self.quantization_config.modules:
            add_save_guard(model.get_submodule(_model_fqn(model, fqn)))  # a re-save is guarded like the original
        return model

    def is_serializable(self) -> bool:
        return True  # save_pretrained writes the same layout back (utils/swaps.py keeps config.json in step)

    @property
    def is_trainable(self) -> bool:
        # SparseDelta values train; quantized layers do not
        return all(m.get("type") == "SparseDelta" for m in self.quantization_config.modules.values())


def register() -> None:
    """Register the config and quantizer with transformers (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(SparseftQuantConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(SparseftHfQuantizer)


def folder_quant_config(directory: str | Path) -> dict | None:
    """The quantization_config dict in `<directory>/config.json`, or None."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("quantization_config")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a valid config.json ({exc})") from None

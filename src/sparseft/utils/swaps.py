"""Keep `save_pretrained` folders of models with sparseft's swapped-in modules loadable and honest.

sparseft swaps modules into transformers models: `QuantLinear`, `QuantEmbedding` and
`DynamicInt8Linear` (quantization) and `SparseDelta` (sparse fine-tuning). Their state dicts use
their own tensor names (`qweight`, `scale`, `base.weight`, `values`, ...), so without help a
`model.save_pretrained(dir)` folder loads in `from_pretrained` as a model whose swapped layers
are **randomly initialised**. Two mechanisms prevent that, both through public hooks:

* `record_swaps_(model)` (called by `quantize_`, `sparsify_`, `merge_sparse_` and the loaders)
  describes every swapped module in `model.config.quantization_config`, the place transformers
  reads pre-quantized checkpoints from:
      {"quant_method": "sparseft", "format_version": 1, "layout": "modules",
       "modules": {"<fqn>": {"type": "QuantLinear", "bits": 4, ...}, ...}}
  After `import sparseft` the quantizer registered for "sparseft" (export/hf_quantizer.py)
  rebuilds those modules before the weights load, so `AutoModelFor*.from_pretrained(dir)`
  returns the same model. When no swapped module is left, the entry is removed again.
* `add_save_guard(module)`: the module's state dict also holds `<fqn>.weight` as an empty
  tensor. Plain transformers (no sparseft) skips the unknown quant_method and would then
  re-initialise `<fqn>.weight`; with the empty tensor in the file it instead stops with a size
  mismatch error. The guard is dropped again when a state dict is loaded into the module.

The duck-typed protocol for a new swapped module class (a sparseft class: its import path is
recorded as "class" and only `sparseft.*` paths are imported on load):
  * `swap_spec() -> dict`: JSON-able constructor arguments (`Cls(**spec)` rebuilds an empty
    module whose buffers have the stored shapes), or also a classmethod
    `from_swap_spec(spec, current_module, shapes)` when the shapes depend on the data
    (`shapes`: {local tensor name: (shape, dtype)} read from the safetensors header);
  * `add_save_guard(self)` in `__init__` (record_swaps_ adds it too, for modules it sees).
"""

from __future__ import annotations

from typing import Any

QUANT_METHOD = "sparseft"
FORMAT_VERSION = 1
GUARD = "weight"  # the name plain transformers expects; an empty tensor under it refuses to load


def _add_guard(module, state_dict, prefix, local_metadata) -> None:
    import torch

    if any(t.is_meta for t in module.buffers(recurse=False)):
        return  # a skeleton (from_pretrained lists the tensors to fill from it): nothing is saved
    state_dict[prefix + GUARD] = torch.empty(0, dtype=torch.uint8)


def _drop_guard(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                error_msgs) -> None:
    guard = state_dict.get(prefix + GUARD)
    if guard is not None and guard.numel() == 0:
        del state_dict[prefix + GUARD]


def add_save_guard(module) -> None:
    """Write an empty `<prefix>weight` into `module`'s state dicts (and drop it when loading).
    Idempotent; `record_swaps_` adds it to every swapped module that lacks it."""
    if getattr(module, "_sparseft_save_guard", False):
        return
    module.register_state_dict_post_hook(_add_guard)
    module.register_load_state_dict_pre_hook(_drop_guard)
    module._sparseft_save_guard = True


def swapped_modules(model) -> dict[str, dict[str, Any]]:
    """{fqn: {"type": class name, **swap_spec()}} for every swapped module, outermost first.

    Modules inside a swapped module (the `base` of a SparseDelta) are not listed separately.
    """
    out: dict[str, dict[str, Any]] = {}
    for fqn, module in model.named_modules():
        spec = getattr(module, "swap_spec", None)
        if not callable(spec) or any(fqn.startswith(f"{outer}.") for outer in out):
            continue
        cls = type(module)
        out[fqn] = {"type": cls.__name__, "class": f"{cls.__module__}.{cls.__qualname__}", **spec()}
    return out


def is_sparseft_quant_config(qc) -> bool:
    qc = qc.to_dict() if hasattr(qc, "to_dict") else qc
    return isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD


def record_swaps_(model) -> None:
    """Describe `model`'s swapped modules in `model.config.quantization_config` (see module doc).

    Raises ValueError when the model already carries another library's quantization_config
    (the folder would then describe one scheme and hold another).
    """
    config = getattr(model, "config", None)
    if config is None:  # a bare nn.Module: nothing for save_pretrained to read
        return
    modules = swapped_modules(model)
    current = getattr(config, "quantization_config", None)
    if current is not None and not is_sparseft_quant_config(current):
        if not modules:
            return
        method = current.get("quant_method") if isinstance(current, dict) else getattr(current, "quant_method", "?")
        raise ValueError(f"the model already carries a {method!r} quantization_config; sparseft cannot describe "
                         f"its swapped modules next to it (load the model dequantized first)")
    for fqn in modules:
        add_save_guard(model.get_submodule(fqn))
    if modules:
        config.quantization_config = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION,
                                      "layout": "modules", "modules": modules}
    elif current is not None:
        del config.quantization_config

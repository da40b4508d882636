"""What a factorized model's folder records, and how each loading path treats it.

`factorize_` records two things in `model.config`, so an ordinary `save_pretrained` (the `save`
stage, `sparseft factorize`) writes a folder that describes itself:

  * `quantization_config` {"quant_method": "sparseft", "layout": "modules", "modules": {fqn:
    {"type": "FactorizedLinear", "in_features", "out_features", "rank", "bias", ["up" / "down":
    the spec of a quantized factor]}}} - sparseft's swapped-module record (utils/swaps.py), what
    the loaders act on;
  * `sparseft_factorization` {"format_version", "method", "config", "methods", "layers": {fqn:
    {"rank", "bias"}}} - the method and config that produced the ranks (`methods`: every
    factorization applied, in order), for people and reports.

model.safetensors then holds `<fqn>.up.weight` [out, r], `<fqn>.down.weight` [r, in],
`<fqn>.up.bias` and an empty guard `<fqn>.weight`. Loading:

  * `sparseft.load(dir)`, `load_model(dir, task)`, `sparseft eval dir`, `model: dir` in recipes,
    and `AutoModelFor*.from_pretrained(dir)` after `import sparseft`: sparseft's transformers
    quantizer puts empty `FactorizedLinear` layers (`from_swap_spec`, quantized factors included)
    in place before the weights load - the same outputs as the saved model;
  * plain transformers (no sparseft): stops with a size-mismatch error on the guard tensors
    instead of loading random weights;
  * runtimes that need the original shapes: `merge_factorized_(model)` then `save_pretrained`
    gives a plain dense folder (`sparseft factorize --merge`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from sparseft.compress.factorize.layer import factorized_layers

KEY = "sparseft_factorization"
FORMAT_VERSION = 1


def record_factorization_(model: nn.Module, method: str, config) -> None:
    """Write the factorized layers (rank, bias), method and config into `model.config`."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    previous = getattr(cfg, KEY, None) or {}
    layers = {n: {"rank": m.rank, "bias": getattr(m.up, "bias", None) is not None} for n, m in factorized_layers(model)}
    methods = [*previous.get("methods", []), {"method": method, "config": config.to_dict()}]
    setattr(cfg, KEY, {"format_version": FORMAT_VERSION, "method": method, "config": config.to_dict(),
                       "methods": methods, "layers": layers})


def folder_factorization(directory: str | Path) -> dict | None:
    """The `sparseft_factorization` entry of `<directory>/config.json`, or None."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text()).get(KEY)
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a valid config.json ({exc})") from None
    return entry or None


def load_factorized(directory: str | Path, *, dtype=None) -> nn.Module:
    """`from_pretrained` of a factorized folder with sparseft's quantizer registered (eval mode).

    `sparseft.load` / `load_model` do the same for every kind of folder; this is the direct call.
    """
    import torch
    import transformers

    from sparseft.export.hf_quantizer import register

    register()
    config = transformers.AutoConfig.from_pretrained(directory)
    archs = getattr(config, "architectures", None) or []
    arch = getattr(transformers, archs[0], None) if archs else None
    if not (isinstance(arch, type) and issubclass(arch, transformers.PreTrainedModel)):
        raise ValueError(f"{Path(directory) / 'config.json'}: architectures {archs} does not name a transformers "
                         f"model class")
    return arch.from_pretrained(directory, dtype=dtype or torch.float32).eval()

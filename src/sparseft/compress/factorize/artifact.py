"""Factorized models on disk: `save_pretrained` writes them, `load_factorized` reads them back,
plain transformers refuses them (never a silently random model).

After `factorize_`, `model.config.sparseft_factorization` records the method, its config and
every factorized layer's rank and bias:

    "sparseft_factorization": {"format_version": 1, "method": "whiten_svd", "config": {...},
                               "layers": {"bert.encoder.layer.0.attention.self.query":
                                          {"rank": 96, "bias": true}, ...}}

so an ordinary `model.save_pretrained(dir)` (the `save` stage, `sparseft factorize`) writes a
folder that describes itself: config.json (dense sizes + that entry) and model.safetensors with
`<fqn>.up.weight` [out, r], `<fqn>.down.weight` [r, in], `<fqn>.up.bias` and an empty guard
`<fqn>.weight` (layer.py). Loading:

  * `load_factorized(dir)` (and `sparseft.load.model.load_model`, hence `sparseft eval`, recipes
    with `model: dir`): builds the architecture from config.json, puts empty `FactorizedLinear`
    layers of the recorded ranks in place and loads every tensor strictly (a missing, unexpected
    or mis-shaped tensor is an error naming the file).
  * plain `AutoModelFor*.from_pretrained(dir)`: stops with a size-mismatch error on the guard
    tensors (with `ignore_mismatched_sizes=True` it would re-initialise them: do not).
  * runtimes that need the original shapes: `merge_factorized_(model)` then `save_pretrained`
    gives a plain dense folder (`sparseft factorize --merge`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from sparseft.compress.factorize.layer import FactorizedLinear, factorized_layers
from sparseft.compress.quantize.layers import set_module

KEY = "sparseft_factorization"
FORMAT_VERSION = 1


def record_factorization_(model: nn.Module, method: str, config) -> None:
    """Write the factorized layers (rank, bias), method and config into `model.config`."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    previous = getattr(cfg, KEY, None) or {}
    layers = {n: {"rank": m.rank, "bias": m.up.bias is not None} for n, m in factorized_layers(model)}
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


def is_factorized_folder(directory: str | Path) -> bool:
    return folder_factorization(directory) is not None


def _check_entry(entry: dict, path: Path) -> dict[str, dict]:
    if entry.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: {KEY} format_version {entry['format_version']} is newer than this sparseft "
                         f"reads ({FORMAT_VERSION}); upgrade sparseft")
    layers = entry.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise ValueError(f"{path}: {KEY}.layers must map layer names to {{rank, bias}}")
    for fqn, spec in layers.items():
        rank = spec.get("rank") if isinstance(spec, dict) else None
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"{path}: {KEY}.layers[{fqn!r}].rank must be an integer >= 1, got {rank!r}")
    return layers


def install_shells_(model: nn.Module, layers: dict[str, dict], where: str) -> None:
    """Replace each listed nn.Linear by an (uninitialised) FactorizedLinear of the recorded rank."""
    for fqn, spec in layers.items():
        try:
            old = model.get_submodule(fqn)
        except AttributeError:
            raise ValueError(f"{where}: factorized layer {fqn!r} does not exist in {type(model).__name__}") from None
        if not isinstance(old, nn.Linear):
            raise ValueError(f"{where}: factorized layer {fqn!r} is a {type(old).__name__}, not a Linear layer")
        set_module(model, fqn, FactorizedLinear(old.in_features, old.out_features, spec["rank"],
                                                bias=bool(spec.get("bias", True)), dtype=old.weight.dtype))


def _weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{index}: not a valid safetensors index ({exc})") from None
        return [directory / n for n in names]
    raise FileNotFoundError(f"{directory}: no model.safetensors (factorized folders are read from safetensors only)")


def load_factorized(directory: str | Path, *, dtype: torch.dtype | None = None, config=None) -> nn.Module:
    """Rebuild a factorized model from a `save_pretrained` folder (eval mode, CPU).

    Args:
        config: a transformers config to use instead of config.json's (e.g. with new labels).
    """
    import transformers
    from transformers import AutoConfig

    from sparseft.utils.tensorfile import load_tensors

    directory = Path(directory)
    path = directory / "config.json"
    entry = folder_factorization(directory)
    if entry is None:
        raise ValueError(f"{path}: no {KEY} entry: not a factorized model folder")
    layers = _check_entry(entry, path)
    config = config or AutoConfig.from_pretrained(directory)
    archs = getattr(config, "architectures", None) or []
    arch = getattr(transformers, archs[0], None) if archs else None
    if not (isinstance(arch, type) and issubclass(arch, transformers.PreTrainedModel)):
        raise ValueError(f"{path}: architectures {archs} does not name a transformers model class")
    quant = getattr(config, "quantization_config", None)   # quantized factors (utils/swaps.py records them)
    if quant is not None:
        del config.quantization_config
    model = arch._from_config(config, dtype=dtype or torch.float32)
    install_shells_(model, layers, str(path))
    state = {}
    for f in _weight_files(directory):
        state.update(load_tensors(f))
    if quant is not None:
        _install_swapped_(model, quant, state, path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:   # shape mismatch
        raise ValueError(f"{directory}: tensors do not fit {arch.__name__} with the recorded ranks ({exc})") from None
    tied = {k for k in result.missing_keys if _is_tied(model, k, state)}
    missing = sorted(set(result.missing_keys) - tied)
    if missing or result.unexpected_keys:
        raise ValueError(f"{directory}: missing tensors {missing[:5]} / unexpected tensors "
                         f"{sorted(result.unexpected_keys)[:5]} for {arch.__name__} with the recorded ranks")
    model.tie_weights()
    if quant is not None:
        from sparseft.utils.swaps import record_swaps_

        record_swaps_(model)      # config.json of a re-save describes the quantized factors again
    return model.eval()


def _install_swapped_(model: nn.Module, quant, state: dict, path: Path) -> None:
    """Empty quantized modules (e.g. int8 factors) where config.json's sparseft quantization_config
    lists them, shaped as stored; the strict state-dict load then fills them."""
    from sparseft.export.hf_quantizer import build_module   # lazy: the one builder of swapped modules
    from sparseft.utils.swaps import is_sparseft_quant_config

    quant = quant.to_dict() if hasattr(quant, "to_dict") else quant
    if not is_sparseft_quant_config(quant) or quant.get("layout", "modules") != "modules":
        raise ValueError(f"{path}: a factorized model with a {quant.get('quant_method')!r} / "
                         f"{quant.get('layout')!r} quantization_config cannot be loaded")
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    for fqn, spec in quant.get("modules", {}).items():
        try:
            current = model.get_submodule(fqn)
        except AttributeError:
            raise ValueError(f"{path}: quantized module {fqn!r} does not exist in the factorized model") from None
        set_module(model, fqn, build_module(fqn, spec, current, shapes))


def _is_tied(model: nn.Module, key: str, state: dict) -> bool:
    """`key` is missing only because it is tied to a tensor the file holds (e.g. lm_head.weight)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    p = params.get(key)
    return p is not None and any(params.get(k) is p for k in state if k != key)

"""Sparse fine-tuning registered as a peft method ("sparseft"): get_peft_model, save_pretrained,
PeftModel.from_pretrained, merge_and_unload and unload, Trainer and TRL's `peft_config=`.

    import sparseft.integrations                  # registers the method with peft
    from peft import PeftModel, get_peft_model
    model = get_peft_model(base, SparseFTConfig(density=0.01, mask="magnitude"))
    ...train (transformers.Trainer / trl.SFTTrainer; add SparseFTCallback() for fisher/lottery/regrow)...
    model.save_pretrained("adapter")             # adapter_model.safetensors: indices + values only
    merged = PeftModel.from_pretrained(base2, "adapter").merge_and_unload()

How the entries are chosen (the budget is global over all targeted weights, as in sparseft):
  * creation: every targeted module becomes a pending `SparseFTLayer`; right after injection
    (`inject_adapter`, also for added adapters) the base is fingerprinted and, for data-free
    masks (random, magnitude, regrow with a data-free init), the entries are selected at once;
  * data-driven masks (fisher, lottery, regrow init="fisher") are selected by
    `select_sparseft_masks_(model, batches=...)`, which `SparseFTCallback` calls at the start of
    training with the Trainer's own batches;
  * loading (`PeftModel.from_pretrained`): the saved indices and values replace the selected
    or pending ones (`_remap_adapter_state_dict_for_load` sizes the layers to the checkpoint),
    after checking that the base has the fingerprint recorded in adapter_config.json.

Selection uses sparseft's registered mask methods and budget code (`sparseft.masks`) with every
parameter trainable, as `select_masks` sees a plain model: the same scores and exact top-k, so a
peft run and `sparse_finetune` choose the same entries (tested for magnitude, fisher, lottery).
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable

import torch
import torch.nn as nn
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import register_peft_method

from sparseft.export.fingerprint import fingerprint_tensors
from sparseft.integrations.peft_config import PEFT_TYPE, SparseFTConfig, ensure_peft_type
from sparseft.integrations.peft_layer import SparseFTLayer, SparseFTLinear
from sparseft.masks.select import budget_quotas, masks_from_scores
from sparseft.registry import REGISTRY

_PEFT_PREFIX = "base_model.model."


class SparseFTModel(BaseTuner):
    """peft tuner for `SparseFTConfig` (see the module docstring)."""

    prefix: str = "sparseft_"
    tuner_layer_cls = SparseFTLayer
    target_module_mapping: dict = {}  # SparseFTConfig defaults target_modules to "all-linear"

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key,
                            **optional_kwargs) -> None:
        if isinstance(target, SparseFTLayer):
            target.update_layer(adapter_name, inference_mode=peft_config.inference_mode)
            return
        linear = isinstance(target, nn.Linear) or type(target).__name__ == "Conv1D"  # transformers' GPT-2 layer
        new_module = (SparseFTLinear if linear else SparseFTLayer)(target, adapter_name)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until activated
        self._replace_module(parent, target_name, new_module, target)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        # peft calls `_post_injection_hook` only for the first adapter; add_adapter / load_adapter
        # of a second one come through here too, so fingerprinting and selection happen here.
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self._after_injection(model, self.peft_config[adapter_name], adapter_name)

    def _after_injection(self, model: nn.Module, config: SparseFTConfig, adapter_name: str) -> None:
        layers = sparseft_layers(model, adapter_name)
        if not layers:
            raise ValueError("SparseFTConfig: target_modules matched no module with a 2-D weight")
        weights = {name: layer.get_base_layer().weight for name, layer in layers.items()}
        if config.base_fingerprint:  # a saved adapter being loaded (or a reused config): is this its base?
            check_adapter_base(plain_parameters(model), config)
        else:
            config.fingerprint_tensors = sorted(weights)
            config.base_fingerprint = fingerprint_tensors(weights, config.fingerprint_tensors)
            config.base_dtype = str(next(iter(weights.values())).dtype).removeprefix("torch.")
            config.shapes = {name: list(w.shape) for name, w in weights.items()}
            id2label = getattr(getattr(model, "config", None), "id2label", None)
            if config.task_type in ("SEQ_CLS", "TOKEN_CLS") and id2label and config.labels is None:
                config.labels = [id2label[i] for i in sorted(id2label)]
        # (when loading a trainable adapter, the saved indices then replace this selection)
        if not config.inference_mode and not config.mask_config().batches_needed():
            select_sparseft_masks_(model, adapter_name=adapter_name, config=config)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        for name, module in model.named_modules():
            if not isinstance(module, SparseFTLayer) or adapter_name not in module.sparseft_values:
                continue
            key_i, key_v = (f"{name}.sparseft_{kind}.{adapter_name}" for kind in ("indices", "values"))
            if key_i in remapped and key_v in remapped:  # size the layer like the checkpoint
                module.set_indices(adapter_name, remapped[key_i], remapped[key_v])
        return remapped


def plain_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """{name in the plain base model: parameter} of a model with SparseFTLayers injected."""
    return {n.removeprefix(_PEFT_PREFIX).replace(".base_layer.", "."): p for n, p in model.named_parameters()}


def check_adapter_base(weights: dict[str, torch.Tensor], config: SparseFTConfig) -> None:
    """Raise ValueError if `weights` ({plain name: tensor}) are not the base the adapter was trained on."""
    names = config.fingerprint_tensors or []
    missing = sorted(set(names) - set(weights))
    if missing or not names:
        raise ValueError(f"this sparse adapter was trained on a base with parameters {missing[:3]} that this "
                         f"model does not have (wrong base model?)")
    dtype = str(weights[names[0]].dtype).removeprefix("torch.")
    if config.base_dtype and dtype != config.base_dtype:
        warnings.warn(f"the base is {dtype}, the sparse adapter was trained on a {config.base_dtype} base: "
                      f"its fingerprint cannot be checked", stacklevel=3)
        return
    if fingerprint_tensors(weights, names) != config.base_fingerprint:
        raise ValueError(
            f"this sparse adapter was trained on base {config.base_model_name_or_path or '(unnamed)'} "
            f"({config.base_fingerprint[:19]}...), but this model's weights differ; load it onto the base it "
            f"was trained on (or pass config=... with base_fingerprint=None to skip the check)")


def sparseft_layers(model: nn.Module, adapter_name: str = "default") -> dict[str, SparseFTLayer]:
    """{weight fqn in the plain base model: layer} for the layers holding `adapter_name`."""
    out = {}
    for fqn, module in model.named_modules():
        if isinstance(module, SparseFTLayer) and adapter_name in module.sparseft_values:
            out[f"{fqn.removeprefix(_PEFT_PREFIX)}.weight"] = module
    return out


def peft_sparseft_config(model: nn.Module, adapter_name: str = "default") -> SparseFTConfig:
    config = getattr(model, "peft_config", {}).get(adapter_name)
    if not isinstance(config, SparseFTConfig):
        raise ValueError(f"the model has no SparseFTConfig adapter named {adapter_name!r}")
    return config


def pending_adapters(model: nn.Module) -> set[str]:
    """Adapter names whose entries are not selected yet."""
    return {a for m in model.modules() if isinstance(m, SparseFTLayer) for a in m.pending}


def select_sparseft_masks_(model: nn.Module, *, batches: Iterable[dict] | None = None,
                           loss_fn: Callable | None = None, adapter_name: str = "default",
                           config: SparseFTConfig | None = None) -> dict[str, int]:
    """Choose the tuned entries of every SparseFTLayer of `adapter_name` (in place).

    Args:
        model: a PeftModel from `get_peft_model(base, SparseFTConfig(...))` (or the tuner's model).
        batches: collated training batches (dicts of tensors with labels); needed by fisher,
            lottery and regrow with init="fisher" (`config.mask_config().batches_needed()` many).
        loss_fn: (model, batch) -> scalar loss; default `model(**batch).loss`.
        config: the adapter's config (default: read from `model.peft_config`).

    Returns:
        {weight fqn: number of entries selected} (the budget's exact total).

    Example:
        >>> select_sparseft_masks_(peft_model, batches=[collate(train[:8]) for _ in range(8)])  # doctest: +SKIP
    """
    from sparseft.train.loop import default_loss

    config = config or peft_sparseft_config(model, adapter_name)
    cfg = config.mask_config()
    method = REGISTRY.for_config(cfg)
    if cfg.batches_needed() and batches is None:
        raise ValueError(f"mask {config.mask!r} needs training batches (batches=...); with a Trainer, "
                         f"add SparseFTCallback() to its callbacks")
    layers = sparseft_layers(model, adapter_name)
    params = {name: layer.get_base_layer().weight for name, layer in layers.items()}
    # mask methods key parameters by the names `model` itself uses (lottery rewinds by name)
    model_names = {id(p): n for n, p in model.named_parameters()}
    wrapped = {plain: model_names[id(w)] for plain, w in params.items()}
    # selection sees the model as select_masks sees a plain one: every parameter trainable (the
    # lottery's dense phase is full fine-tuning; fisher switches to the targets itself)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    for layer in layers.values():
        layer.selecting = True
    try:
        scores = method.apply_fn(model, {wrapped[n]: w for n, w in params.items()}, cfg, batches=batches,
                                 loss_fn=loss_fn or default_loss)
    finally:
        for layer in layers.values():
            layer.selecting = False
        for p, flag in flags:
            p.requires_grad_(flag)
    scores = {plain: scores[name] for plain, name in wrapped.items()}
    masks = masks_from_scores({n: scores[n] for n in params}, budget_quotas(params, cfg), cfg.allocation)
    for name, layer in layers.items():
        layer.set_indices(adapter_name, torch.nonzero(masks[name].reshape(-1)).reshape(-1))
    return {name: int(m.sum()) for name, m in masks.items()}


def _register() -> None:
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    ensure_peft_type()
    if PEFT_TYPE not in PEFT_TYPE_TO_TUNER_MAPPING:
        register_peft_method(name=PEFT_TYPE.lower(), config_cls=SparseFTConfig, model_cls=SparseFTModel,
                             prefix=SparseFTModel.prefix)


_register()  # importing this module registers the method with peft, once

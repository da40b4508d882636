"""`SparseFTCallback`: data-driven masks and drop/regrow inside `transformers.Trainer` and TRL.

    model = get_peft_model(base, SparseFTConfig(density=0.01, mask="fisher", mask_options={"n_batches": 8}))
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[SparseFTCallback()]).train()

What it does, in Trainer's order:
  * `on_train_begin`: if the adapter's entries are not chosen yet (fisher, lottery, regrow with
    init="fisher"), take the first `batches_needed()` batches of the Trainer's own training
    dataloader (cycling if it has fewer) and run `select_sparseft_masks_` on them. The optimizer
    already exists at this point; selection replaces the data of the (empty) value Parameters,
    whose identity the optimizer holds, before any step (AdamW's state is created lazily).
    Drawing those batches advances the dataloader's sampler once, so the first epoch's order
    differs from a run without selection.
  * `on_save`: the checkpoint's README.md becomes sparseft's adapter model card (how to load it,
    the base fingerprint, the last training loss) instead of peft's empty template.
  * `on_step_end` (after each optimizer step, `state.global_step` 1-based): the regrow mask's
    drop/regrow hook, `sparseft.sft.regrow.RegrowHook` (spiel_ag / spiel_ma:
    `sparseft.sft.spiel.SpielHook`, its rate decaying over `state.max_steps`), the same one
    sparseft's own loop runs, with the Trainer's optimizer for resetting the state of regrown entries.

Resuming (`trainer.train(resume_from_checkpoint=...)`) loads the saved indices before
`on_train_begin`, so selection is not redone. Selection from the callback is single-process:
under several processes, call `select_sparseft_masks_(model, batches=...)` on identical batches
before building the Trainer (DDP fixes parameter sizes when it wraps the model).
"""

from __future__ import annotations

import inspect
import itertools
import os
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sparseft.integrations.peft_method import (peft_sparseft_config, pending_adapters,
                                               select_sparseft_masks_, sparseft_layers)
from sparseft.masks.regrow import RegrowMaskConfig
from sparseft.masks.spiel import SpielMaskConfig
from sparseft.sft.regrow import RegrowHook
from sparseft.sft.spiel import SpielHook


def forward_loss(model: torch.nn.Module) -> Callable[[torch.nn.Module, dict], torch.Tensor]:
    """loss_fn for Trainer batches: `model(**batch).loss` with only the keys the base model's
    forward names (collators may add others, e.g. TRL's `completion_mask`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    def loss_fn(m: torch.nn.Module, batch: dict) -> torch.Tensor:
        out = m(**{k: v for k, v in batch.items() if k in names})
        if out.loss is None:
            raise ValueError("the model returned no loss: the training batches need `labels`")
        return out.loss

    return loss_fn


class SparseFTCallback(TrainerCallback):
    """Mask selection from the Trainer's batches and drop/regrow during training (see module docstring).

    Args:
        adapter_name: the SparseFTConfig adapter to manage.
        loss_fn: (model, batch) -> loss for selection (default: `forward_loss`).

    Example:
        >>> trainer = Trainer(model=peft_model, args=args, train_dataset=ds,
        ...                   callbacks=[SparseFTCallback()])                      # doctest: +SKIP
    """

    def __init__(self, adapter_name: str = "default", loss_fn: Callable | None = None) -> None:
        self.adapter_name = adapter_name
        self.loss_fn = loss_fn
        self.regrow: RegrowHook | SpielHook | None = None
        self.selected: dict[str, int] = {}

    @property
    def history(self) -> list[dict]:
        """Drop/regrow rounds so far ({"step", "replaced"} each)."""
        return self.regrow.history if self.regrow else []

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        config = peft_sparseft_config(model, self.adapter_name)
        cfg = config.mask_config()
        if self.adapter_name in pending_adapters(model):
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise RuntimeError("SparseFTCallback selects data-driven masks in one process only; with "
                                   "several, call select_sparseft_masks_(model, batches=...) before the Trainer")
            if train_dataloader is None:
                raise ValueError("SparseFTCallback needs the Trainer's train_dataloader to select the mask")
            n = cfg.batches_needed()
            batches = list(itertools.islice(iter(train_dataloader), n))
            self.selected = select_sparseft_masks_(model, batches=batches, adapter_name=self.adapter_name,
                                                   loss_fn=self.loss_fn or forward_loss(model))
        if isinstance(cfg, RegrowMaskConfig):
            slots = {name: layer.slot(self.adapter_name)
                     for name, layer in sparseft_layers(model, self.adapter_name).items()}
            self.regrow = RegrowHook(slots, cfg, stop_at=state.max_steps or None)
        elif isinstance(cfg, SpielMaskConfig):
            slots = {name: layer.slot(self.adapter_name)
                     for name, layer in sparseft_layers(model, self.adapter_name).items()}
            self.regrow = SpielHook(slots, cfg, total_steps=state.max_steps)
        return control

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.regrow is not None:
            if optimizer is not None:  # accelerate wraps it; the state lives in the inner optimizer
                self.regrow.optimizer_ref.optimizer = getattr(optimizer, "optimizer", optimizer)
            self.regrow(model, state.global_step)
        return control

    def on_save(self, args, state, control, model=None, **kwargs):
        """Replace peft's template README.md in the new checkpoint with sparseft's adapter card."""
        from sparseft.integrations.convert import ADAPTER_CONFIG, write_adapter_card

        ckpt = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and (ckpt / ADAPTER_CONFIG).exists():
            logged = [r for r in state.log_history if "loss" in r]
            metrics = {"train": {"step": logged[-1].get("step"), "loss": logged[-1]["loss"]}} if logged else None
            write_adapter_card(ckpt, peft_sparseft_config(model, self.adapter_name), metrics=metrics)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.regrow is not None:
            for slot in self.regrow.layers.values():
                slot.acc_grad = None  # free the dense gradient buffers
        return control

"""`sparse_finetune`: select a mask, train only those entries (plus new heads), return the diff.

    result, diff = sparse_finetune(model, data.train, TrainConfig(...), FisherMaskConfig(density=0.01),
                                   collate_fn=PadCollator(pad_id), eval_fn=..., metric=("f1", True))
    save_diff(diff, "runs/sft/diff"); model.save_pretrained("runs/sft/model")

Steps, top to bottom:
  1. masks: `select_masks` on batches of the training data (first batches of the loop's
     epoch-0 order), or, when resuming a run that has a checkpoint, the masks saved with it
     (`<output_dir>/sft_masks.safetensors`), so a resumed lottery run does not redo its dense
     phase. Before reusing them, the checkpoint's run identity must match this call's data and
     config (train/identity.py; the loop then checks the model too): a second call on other
     data into the same output_dir is an error, not a resume. With several processes, rank 0's
     masks are broadcast; under `distributed=fsdp` each rank scores only its shard of every
     targeted weight and a distributed top-k picks the same indices everywhere (sharded_select.py).
  2. freeze everything; new task heads (`heads`, default classifier/score/qa_outputs) and the
     base's `dense_parts` (biases / norms, counted in the budget: sft/dense_parts.py) stay
     densely trainable; targeted weights become `SparseDelta` wrappers (values [k] + indices).
  3. train with the foundation loop (`sparseft.train.loop.train`): its optimizer only sees the
     value vectors and the heads, so gradients and AdamW state are O(k); `regrow` adds its
     drop/regrow `post_step` hook, `spiel_ag` / `spiel_ma` their reselection hook (sft/spiel.py).
  4. extract the SparseDiff (sorted indices, deltas, W0 at those positions, dense heads, manifest
     with the base fingerprint), then merge: the model leaves as plain modules with
     W = W0 + delta, every unselected entry bit-identical to W0.

Weight decay on the value vectors pulls the deltas towards 0, i.e. the weights towards W0.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from sparseft.export.fingerprint import fingerprint
from sparseft.export.sparse_diff import SparseDiff
from sparseft.masks.config import DEFAULT_HEADS, MaskConfig
from sparseft.masks.mask import Masks
from sparseft.masks.regrow import RegrowMaskConfig
from sparseft.masks.spiel import SpielMaskConfig
from sparseft.masks.select import select_masks, target_parameters
from sparseft.registry import REGISTRY
from sparseft.sft import dense_parts as parts_mod
from sparseft.sft.layer import SparseDelta, merge_sparse_, sparsify_indices_
from sparseft.sft.regrow import RegrowHook, track_optimizer
from sparseft.sft.spiel import SpielHook
from sparseft.train.checkpoint import (CheckpointError, checkpoint_dir, has_checkpoint, prepare_run_dir,
                                       read_checkpoint_state)
from sparseft.train.config import TrainConfig
from sparseft.train.defaults import HEAD_WARMUP_LR
from sparseft.train.identity import build_identity, check_resume
from sparseft.train.head_warmup import dense_head_parameters, head_warmup_, warmup_steps
from sparseft.train.loop import (EvalFn, LossFn, TrainResult, default_loss, epoch_batches, selection_batches,
                                 train)
from sparseft.utils.dist import local_device, rank, world_size

MASKS_FILE = "sft_masks.safetensors"


def sparse_finetune(model: torch.nn.Module, train_data: Sequence[dict], train_cfg: TrainConfig,
                    mask_cfg: MaskConfig, *, collate_fn, eval_fn: EvalFn | None = None,
                    metric: tuple[str, bool] = ("loss", False), loss_fn: LossFn | None = None,
                    base_id: str = "", heads: Sequence[str] | None = None,
                    dense_parts: Sequence[str] = (), head_warmup_steps: int | None = 0,
                    head_warmup_lr: float = HEAD_WARMUP_LR,
                    inputs: dict | None = None) -> tuple[TrainResult, SparseDiff]:
    """Sparse fine-tuning of `model` in place; returns (TrainResult, SparseDiff).

    Args:
        model: a transformers (or any torch) model; left with the trained weights merged.
        train_data: tokenized features (see sparseft.load.tokenize); collate_fn pads them.
        train_cfg: the loop's TrainConfig (output_dir holds checkpoints and the saved masks).
        mask_cfg: a registered mask config (random, magnitude, fisher, lottery, regrow, spiel_ag,
            spiel_ma, snr).
        eval_fn / metric / loss_fn: as for `sparseft.train.loop.train`.
        base_id: base model name for the diff's manifest (default: config._name_or_path).
        heads: module patterns trained densely and stored densely in the diff (default:
            classifier, score, qa_outputs); they are also excluded from the sparse targets.
        dense_parts: small base parameters trained densely, "bias" and / or "norm" (BitFit-style);
            their count is taken from the mask's budget, and the diff stores them with their base
            values (sft/dense_parts.py).
        head_warmup_steps / head_warmup_lr: train only the heads for this many steps (AdamW at
            this lr) before the mask is selected; the probed heads are kept. None: the stages'
            default, 300 when there is a head, else 0 (train/head_warmup.py).

    Example:
        >>> result, diff = sparse_finetune(model, data.train, TrainConfig(output_dir="runs/sft"),
        ...                                MagnitudeMaskConfig(density=0.01), collate_fn=PadCollator(0))  # doctest: +SKIP
        inputs: model id, data files and full stage config for the run identity (see
            `sparseft.train.identity.run_inputs`); the mask config and heads are added here.
    """
    loss_fn = loss_fn or default_loss
    heads = list(DEFAULT_HEADS if heads is None else heads)
    mask_cfg = mask_cfg.replace(ignore=list(dict.fromkeys([*mask_cfg.ignore, *heads])))
    out = Path(train_cfg.output_dir)
    head_params = dense_head_parameters(model, heads)
    parts = parts_mod.dense_part_parameters(model, list(dense_parts), skip=set(head_params))
    n_parts = sum(p.numel() for p in parts.values())
    head_warmup_steps = warmup_steps(head_warmup_steps, head_params)
    mask_cfg = parts_mod.reduce_budget(model, mask_cfg, n_parts)
    inputs = dict(inputs or {})
    inputs["config"] = {**inputs.get("config", {}), "mask": mask_cfg.to_dict(), "heads": heads,
                        "dense_parts": list(dense_parts),
                        **({"head_warmup_steps": head_warmup_steps, "head_warmup_lr": head_warmup_lr}
                           if head_warmup_steps else {})}
    inputs.setdefault("model_id", base_id)

    # 1. masks ----------------------------------------------------------------------------------
    if int(os.environ.get("RANK", "0")) == 0:
        prepare_run_dir(out)  # leftovers of killed saves; a checkpoint caught mid-swap is put back
    resuming = train_cfg.resume and has_checkpoint(out)
    if resuming:  # same data and config, or ResumeMismatch before any mask is reused
        saved = read_checkpoint_state(out)
        check_resume(saved.get("identity"), build_identity(None, train_data, train_cfg.to_dict(), inputs),
                     checkpoint_dir(out))
    # the head probe comes before selection (the mask sees a trained head), and runs again on a
    # resume: it is deterministic, and the loop's run identity hashes the probed head
    warmup = head_warmup_(model, head_params, train_data, train_cfg, collate_fn, steps=head_warmup_steps,
                          lr=head_warmup_lr, loss_fn=loss_fn)
    picked = _resume_masks(out, mask_cfg) if resuming else None  # ({fqn: flat indices}, {fqn: shape})
    if picked is None:
        picked = _select(model, train_data, train_cfg, mask_cfg, collate_fn, loss_fn)
        _save_masks(out, *picked, mask_cfg)
    selected, shapes = picked
    n_targeted = sum(math.prod(shape) for shape in shapes.values())
    base_fp = fingerprint(model, [*selected, *parts])
    parts_base = parts_mod.snapshot(parts)

    # 2. freeze, keep heads and dense parts trainable, swap targeted modules for SparseDelta -----
    for p in model.parameters():
        p.requires_grad_(False)
    for p in [*head_params.values(), *parts.values()]:
        p.requires_grad_(True)
    layers = sparsify_indices_(model, selected)  # O(k) positions: no bool mask of the weights' size
    mask_names, selected = sorted([*selected, *parts]), None
    if not layers and not head_params and not parts:
        raise ValueError("nothing to train: the mask selects no entry and the model has no dense head")

    # 3. train: the optimizer sees only the value vectors and the heads ------------------------
    hooks = ([RegrowHook(layers, mask_cfg, stop_at=planned_steps(train_data, train_cfg))]
             if isinstance(mask_cfg, RegrowMaskConfig) else
             [SpielHook(layers, mask_cfg, total_steps=planned_steps(train_data, train_cfg))]
             if isinstance(mask_cfg, SpielMaskConfig) else [])
    for hook in hooks if resuming else ():
        hook.resume_at(int(saved.get("loop", {}).get("step", 0)))  # the window open at the checkpoint
    groups = sparse_param_groups(layers, {**head_params, **parts}, train_cfg.weight_decay)
    try:
        with track_optimizer([layer.values for layer in layers.values()]) as ref:
            for hook in hooks:
                hook.optimizer_ref = ref
            result = train(model, train_data, train_cfg, collate_fn=collate_fn, eval_fn=eval_fn,
                           metric=metric, loss_fn=loss_fn, post_step=hooks, param_groups=groups,
                           inputs=inputs)
    except BaseException:
        merge_sparse_(model, merge=False)  # leave the plain base model behind, not wrappers
        parts_mod.restore_(parts, parts_base)
        raise

    # 4. diff, then merge -------------------------------------------------------------------------
    manifest = {"base_model": base_id or getattr(getattr(model, "config", None), "_name_or_path", ""),
                "base_revision": getattr(getattr(model, "config", None), "_commit_hash", None),  # hub commit
                "base_fingerprint": base_fp, "fingerprint_tensors": mask_names,
                "method": mask_cfg.to_dict(), "mask": REGISTRY.for_config(mask_cfg).name,
                "train": train_cfg.to_dict(), "targeted_params": n_targeted, "heads": heads,
                "dense_parts": list(dense_parts), "dense_part_params": n_parts,
                **task_info(model)}
    if warmup:
        manifest["head_warmup"] = warmup
    if hooks:
        manifest["regrow_history"] = hooks[0].history
    diff = diff_from_layers(layers, head_params, manifest, parts_mod.full_entries_(parts, parts_base))
    diff.manifest["density"] = diff.count / max(1, n_targeted)
    merge_sparse_(model)
    for p in model.parameters():
        p.requires_grad_(True)  # a plain model again, as from_pretrained returns it
    return result, diff


def sparse_param_groups(layers: dict[str, SparseDelta], head_params: dict[str, torch.nn.Parameter],
                        weight_decay: float) -> list[dict]:
    """AdamW groups: value vectors (decayed towards W0) and head matrices decay; biases and norms
    do not (the same rule as the loop's default groups)."""
    decay = [layer.values for layer in layers.values()]
    no_decay = []
    for name, p in head_params.items():
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def planned_steps(train_data: Sequence[dict], cfg: TrainConfig) -> int:
    """Optimizer steps the loop will run (its own formula; WORLD_SIZE processes share batches)."""
    if cfg.max_steps:
        return cfg.max_steps
    n_proc = int(os.environ.get("WORLD_SIZE", "1"))
    n_batches = len(epoch_batches([len(x["input_ids"]) for x in train_data], cfg, 0))
    return math.ceil(math.ceil(n_batches / n_proc) / cfg.grad_accum) * cfg.epochs


def _select(model, train_data, train_cfg: TrainConfig, mask_cfg: MaskConfig, collate_fn, loss_fn
            ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """({fqn: sorted flat indices}, {fqn: shape}) of the selected entries, the same on every rank.

    distributed=fsdp with several processes: from per-shard scores (sharded_select.py); else
    `select_masks` on this process's copy, rank 0's masks broadcast.
    """
    from sparseft.sft import sharded_select

    shapes = {n: tuple(p.shape) for n, p in target_parameters(model, mask_cfg).items()}
    n_needed = mask_cfg.batches_needed()
    if train_cfg.distributed == "fsdp" and world_size() > 1:
        sharded_select.check_sharded_supported(mask_cfg)
        if sharded_select.has_sharded_scorer(mask_cfg):
            _init_group()
            device = local_device()
            batches = selection_batches(train_data, train_cfg, collate_fn, n_needed, rank(), world_size())
            selected, scored = sharded_select.select_indices_sharded(model, mask_cfg, batches=batches,
                                                                     loss_fn=loss_fn, device=device)
            if rank() == 0:
                sharded_select.report_scored(REGISTRY.for_config(mask_cfg).name, scored,
                                             sum(math.prod(s) for s in shapes.values()))
            return selected, shapes
        if rank() == 0:
            print(f"warning: mask method {REGISTRY.for_config(mask_cfg).name!r} has no sharded scorer: it "
                  f"selects on the whole host copy (rank 0's masks broadcast)", file=sys.stderr, flush=True)
    batches = selection_batches(train_data, train_cfg, collate_fn, n_needed)
    if batches:
        model.to(local_device())
    masks = sync_masks(select_masks(model, mask_cfg, batches=batches, loss_fn=loss_fn))
    return {n: torch.nonzero(m.reshape(-1)).reshape(-1).cpu() for n, m in masks.items()}, shapes


def diff_from_layers(layers: dict[str, SparseDelta], head_params: dict[str, torch.Tensor],
                     manifest: dict, full: tuple[dict, dict, dict, dict] | None = None) -> SparseDiff:
    """Sorted indices, fp32 deltas and W0 at those positions for each layer; heads densely;
    `full`: (indices, deltas, base values, shapes) of dense parts stored as sparse entries."""
    indices, values, base, shapes = ({**d} for d in full) if full else ({}, {}, {}, {})
    for name, layer in layers.items():
        order = torch.argsort(layer.indices)
        idx = layer.indices[order]
        indices[name] = idx.cpu()
        values[name] = layer.values.detach()[order].float().cpu()
        base[name] = layer.base.weight.detach().reshape(-1)[idx].cpu()
        shapes[name] = tuple(layer.base.weight.shape)
    dense = {name: p.detach().cpu().clone() for name, p in head_params.items()}
    return SparseDiff(indices, values, shapes, base, dense, dict(manifest))


def task_info(model) -> dict:
    """{"task", "labels"} inferred from a transformers model class and config (for CLI apply)."""
    cls = type(model).__name__
    task = ("ner" if cls.endswith("ForTokenClassification") else
            "cls" if cls.endswith("ForSequenceClassification") else
            "lm" if cls.endswith("ForCausalLM") else None)
    info: dict = {"task": task}
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if task in ("ner", "cls") and id2label:
        info["labels"] = [id2label[i] for i in sorted(id2label)]
    return info


# ---- masks on disk (resume) and across processes -----------------------------------------------

def _save_masks(out: Path, selected: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]],
                cfg: MaskConfig) -> None:
    """Rank 0 writes {fqn: sorted flat indices} plus the config and shapes (model order)."""
    if rank() != 0:
        return
    from sparseft.utils.io import atomic_file

    tensors = {n: selected[n].cpu().contiguous() for n in shapes}
    meta = {"config": cfg.to_json(), "shapes": json.dumps({n: list(s) for n, s in shapes.items()})}
    with atomic_file(out / MASKS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _resume_masks(out: Path, cfg: MaskConfig) -> tuple[dict[str, torch.Tensor], dict[str, tuple]] | None:
    path = out / MASKS_FILE
    if not path.exists():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        saved = load_file(str(path))
        saved_cfg, shapes = json.loads(meta["config"]), json.loads(meta["shapes"])
    except Exception as exc:  # truncated / corrupt file, or metadata that is not ours
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: cannot read the saved masks ({reason}); delete it or start "
                              f"afresh (resume=false / --no-resume)") from None
    if saved_cfg != json.loads(cfg.to_json()):
        raise ValueError(f"{path} was selected with another mask config; resume with the same "
                         f"config, or start afresh (resume=false / --no-resume)")
    # shapes are in model order: the optimizer state is matched by position
    return ({n: saved[n].to(torch.long) for n in shapes}, {n: tuple(s) for n, s in shapes.items()})


def _init_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())


def sync_masks(masks: Masks) -> Masks:
    """With several processes, make every process use rank 0's masks (selection on GPUs is not
    bit-deterministic, and DDP needs identical value-vector shapes everywhere)."""
    import torch.distributed as dist

    if world_size() < 2:
        return masks
    _init_group()
    device = local_device() if dist.get_backend() == "nccl" else torch.device("cpu")
    out = {}
    for name, m in masks.items():
        t = m.to(device=device, dtype=torch.uint8)
        dist.broadcast(t, 0)
        out[name] = t.bool().to(m.device)
    return out

"""The training loop: one readable function on Accelerate (the only module that imports it).

    for epoch:
        for micro-batch in a (seed, epoch)-ordered loader:
            loss = loss_fn(model, batch) / grad_accum   -> NaN/inf check -> backward
            every grad_accum micro-batches:
                clip -> optimizer.step() -> post_step hooks (mask enforcement) -> scheduler -> zero_grad
                log / eval / checkpoint on schedule
    load the best weights, return a TrainResult

`post_step` hooks run right after `optimizer.step()`: that is where pruning masks are re-applied
(`reapply_masks_`) or sparse fine-tuning drops and regrows entries. They are explicit arguments,
not hooks hidden on modules. Distillation or other objectives come in through `loss_fn`.

Multi-process: `accelerate launch` (or `torchrun`) runs this same function in each process; the
loader is sharded by Accelerate, and every process runs the (cheap) evaluation on the whole eval
set so that best-checkpoint decisions agree without extra communication.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sparseft.train.checkpoint import (LoopState, has_checkpoint, load_checkpoint, load_checkpoint_weights,
                                       load_weights, prepare_run_dir, read_checkpoint_state, save_checkpoint,
                                       save_weights)
from sparseft.train import distributed
from sparseft.train.config import TrainConfig
from sparseft.train.identity import build_identity
from sparseft.train.precision import PrecisionChoice, Probe, choose_precision, step_probe
from sparseft.train.schedules import linear_warmup_decay

LossFn = Callable[[torch.nn.Module, dict], torch.Tensor]
PostStep = Callable[[torch.nn.Module, int], None]
EvalFn = Callable[[torch.nn.Module], dict]


class TrainingDiverged(RuntimeError):
    """Raised when the loss becomes NaN or infinite."""


@dataclass
class TrainResult:
    steps: int
    epochs_done: int
    train_seconds: float
    best_metric: float | None
    best_step: int | None
    metric_name: str
    history: list[dict] = field(default_factory=list)
    peak_memory_mb: float = 0.0
    tokens_per_second: float = 0.0
    seconds_per_step: float = 0.0
    resumed_from_step: int | None = None  # the checkpoint's step when resumed (== steps: already finished)

    def to_dict(self) -> dict:
        return asdict(self)


def default_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def make_accelerator(cfg: TrainConfig, probe: Probe | None = None, resumed: str | None = None) -> Accelerator:
    # 'auto': bf16 on GPUs that have it; on CPUs only with native bf16 units and a faster probed step;
    # a resumed 'auto' run keeps the precision its checkpoint was trained in (`resumed`), never re-probes
    if cfg.mixed_precision == "auto" and resumed:
        choice = PrecisionChoice(resumed, "resumed run: the precision its checkpoint was trained in")
    else:
        choice = choose_precision(cfg.mixed_precision, probe=probe)
    if cfg.mixed_precision == "auto":
        choice.log()  # one line: the decision and its reason
    precision = choice.precision
    # cpu=True without CUDA: otherwise, under torchrun on a CPU machine, Accelerate treats every
    # process as its own single-process job (no loader sharding, no gradient all-reduce).
    plugins = _engine_plugins(cfg)  # DeepSpeed: cpu=False, its CPU accelerator then talks gloo
    _forget_other_precision(precision)
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                       cpu=not torch.cuda.is_available() and not plugins, **plugins)


def drop_autocast_wrapper_(model: torch.nn.Module) -> None:
    """Undo the forward patch of `Accelerator.prepare` under mixed precision.

    With bf16 / fp16, Accelerate replaces `model.forward` by an autocast-wrapped copy and keeps the
    old one in `model._original_forward`; `unwrap_model` leaves that patch in place. Without this,
    the model handed back by `train()` would keep running in bf16 autocast: evaluation and timing
    after training would silently measure another precision than the saved fp32 weights give.
    """
    if "_original_forward" not in model.__dict__:
        return
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        return  # a bf16 base with an fp32 head runs only under autocast: bf16 is its own precision
    original = model.__dict__.pop("_original_forward")
    if getattr(original, "__func__", None) is type(model).forward:
        model.__dict__.pop("forward", None)  # it was the class's forward: no instance attribute left
    else:
        model.forward = original


def _forget_other_precision(precision: str) -> None:
    """Accelerate keeps one AcceleratorState per process and refuses an Accelerator with another
    mixed precision. Two train() calls in one process can choose differently ('auto' probes each
    run), so a state left with another precision is dropped; PartialState (the process group) stays."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _engine_plugins(cfg: TrainConfig) -> dict:
    """Accelerate's DeepSpeed plugin for distributed='deepspeed' (config dict from train/distributed.py)."""
    if cfg.distributed != "deepspeed":
        return {}
    distributed.require_engine("deepspeed")
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    from sparseft.utils.dist import world_size

    plugins = {"deepspeed_plugin": DeepSpeedPlugin(**distributed.deepspeed_plugin_kwargs(cfg, world_size()))}
    if not torch.cuda.is_available():  # Accelerate picks a back end only for GPUs unless told
        plugins["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    return plugins


def default_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups over trainable parameters: no weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def epoch_batches(lengths: Sequence[int], cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """Batches of example indices; a pure function of (seed, epoch), so a resumed run sees the same.

    With `group_by_length`, examples are shuffled, cut into mega-batches of 50 batches, sorted
    by length inside each, cut into batches, and the batch order is shuffled (as HF Trainer's
    group_by_length): far less padding on data with mixed lengths (CoNLL: ~3x faster on CPU).
    """
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    bs = cfg.batch_size
    if not cfg.group_by_length:
        return [order[i:i + bs] for i in range(0, len(order), bs)]
    mega = bs * 50
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def selection_batches(train_data: Sequence[dict], cfg: TrainConfig, collate_fn, n: int,
                      rank: int = 0, world: int = 1) -> list[dict]:
    """The first `n` batches of the loop's epoch-0 order (cycling epochs if there are fewer).

    With `world` > 1: this rank's share of the first `n` global batches (each global batch is
    `world` consecutive per-process batches; rank r takes the r-th, as the loop's loader does).
    """
    if n <= 0:
        return []
    lengths = [len(x["input_ids"]) for x in train_data]
    wanted, order, epoch = n * world, [], 0
    while len(order) < wanted:
        order += epoch_batches(lengths, cfg, epoch)[: wanted - len(order)]
        epoch += 1
    return [collate_fn([train_data[i] for i in idx]) for idx in order[rank::world]]


def epoch_loader(data: Sequence[dict], cfg: TrainConfig, epoch: int, collate_fn) -> DataLoader:
    lengths = [len(x["input_ids"]) for x in data]
    # Its own generator: creating a DataLoader iterator draws a base seed, and drawing it from the
    # global RNG would shift dropout after a mid-epoch resume (the resumed run creates one more).
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 1)
    return DataLoader(data, batch_sampler=epoch_batches(lengths, cfg, epoch), collate_fn=collate_fn,
                      generator=gen)


def peak_memory_mb() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(model: torch.nn.Module, train_data: Sequence[dict], cfg: TrainConfig, *, collate_fn,
          eval_fn: EvalFn | None = None, metric: tuple[str, bool] = ("loss", False),
          loss_fn: LossFn = default_loss, post_step: Sequence[PostStep] = (),
          param_groups: list[dict] | None = None, inputs: dict | None = None) -> TrainResult:
    """Train `model` in place on tokenized `train_data` and return a TrainResult.

    Args:
        model: any torch module whose trainable parameters have requires_grad=True.
        train_data: list of feature dicts (see sparseft.load.tokenize); collate_fn pads them.
        eval_fn: model -> metrics dict; run per `cfg.eval_every`; selects the best checkpoint.
        metric: (key in eval_fn's dict, greater_is_better), e.g. ("f1", True).
        loss_fn: (model, batch) -> scalar loss; default `model(**batch).loss`.
        post_step: callables (model, step) run right after each optimizer.step().
        param_groups: optimizer groups; default AdamW groups over requires_grad parameters.
        inputs: what the caller knows of the run beyond these arguments (model id, data files,
            full stage config; `sparseft.train.identity.run_inputs`), recorded in checkpoints:
            resume requires the same model, data and config (train/identity.py).

    Example:
        >>> result = train(model, data.train, TrainConfig(epochs=1), collate_fn=PadCollator(0))  # doctest: +SKIP
    """
    if len(train_data) == 0:
        raise ValueError("no training examples")
    if param_groups is None:
        default_param_groups(model, cfg.weight_decay)  # nothing trainable: its one-line error, before the probe
    probe_batch = [train_data[i] for i in range(min(len(train_data), cfg.batch_size))]
    out = Path(cfg.output_dir)
    accelerator = make_accelerator(cfg, probe=step_probe(model, collate_fn(probe_batch), loss_fn),
                                   resumed=_checkpoint_precision(cfg, out))
    log_path = out / "log.jsonl"
    metric_name, greater = metric
    is_main = accelerator.is_main_process

    # ---- set-up: optimizer, schedule, optional resume -------------------------------------
    set_seed(cfg.seed)
    if is_main:
        prepare_run_dir(out)  # what killed saves left: temporary copies of weights + optimizer
    accelerator.wait_for_everyone()
    identity = build_identity(model, train_data, cfg.to_dict(), inputs)  # hashed before .to(device)
    distributed.prepare_model_(model, cfg)  # frozen weights in base_dtype, activation checkpointing
    engine, original = distributed.engine_for(cfg, accelerator.num_processes), model
    if engine is None:
        model.to(accelerator.device)
    groups = param_groups if param_groups is not None else default_param_groups(model, cfg.weight_decay)
    resuming = cfg.resume and has_checkpoint(out)
    if engine:  # fsdp / deepspeed train a sharded replica; copied back into `original` at the end
        distributed.check_engine_supported(engine, post_step=post_step, resume_checkpoint=resuming)
        if resuming:  # fsdp: the saved full tensors go into the plain model, then it is sharded
            load_checkpoint_weights(out, model, identity)
        model, groups = distributed.make_replica(model, groups, engine=engine, device=accelerator.device,
                                                 precision=accelerator.mixed_precision, offload=cfg.offload,
                                                 zero_stage=cfg.zero_stage)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    n_proc = accelerator.num_processes
    lengths = [len(x["input_ids"]) for x in train_data]
    batches_per_epoch = math.ceil(len(epoch_batches(lengths, cfg, 0)) / n_proc)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)  # a partial group still steps
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = linear_warmup_decay(optimizer, total_steps, int(cfg.warmup_ratio * total_steps))

    state, resumed_from = LoopState(), None
    if resuming:  # ResumeMismatch unless same model, data and config
        state, _ = load_checkpoint(out, None if engine else model, optimizer, scheduler, identity,
                                   optimizer_state_fn=distributed.shard_optimizer_state_fn(optimizer) if engine else None)
        _truncate_log(log_path, state.step, is_main)
        resumed_from = state.step
        if state.step >= total_steps:
            accelerator.print(f"{out} holds a finished run ({state.step} steps) of the same model, data and "
                              f"config: nothing to train, its weights are reused (--no-resume / resume: false "
                              f"trains afresh)")
        else:
            accelerator.print(f"resumed from {out}/checkpoints/last at step {state.step} (epoch {state.epoch})")
    else:
        _truncate_log(log_path, 0, is_main)  # a fresh start (e.g. --no-resume): no lines of an earlier run
    if engine == "fsdp":  # already sharded by fully_shard: Accelerate must not DDP-wrap it
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)

    history: list[dict] = []
    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step",
               disable=not (cfg.progress and is_main), dynamic_ncols=True)
    t_start, tokens_seen, step_times = time.perf_counter(), 0, []
    running_loss, running_n = 0.0, 0
    t_step = time.perf_counter()

    # ---- the loop --------------------------------------------------------------------------
    while state.step < total_steps and state.epoch < n_epochs:
        model.train()
        loader = accelerator.prepare_data_loader(epoch_loader(train_data, cfg, state.epoch, collate_fn),
                                                 device_placement=True)
        if state.batches_in_epoch:
            loader = accelerator.skip_first_batches(loader, state.batches_in_epoch)
        for batch in loader:
            with accelerator.accumulate(model):
                loss = loss_fn(model, batch)
                check = accelerator.reduce(loss.detach(), reduction="mean")
                if not torch.isfinite(check):
                    raise TrainingDiverged(
                        f"loss is {check.item()} at step {state.step + 1} (epoch {state.epoch}); "
                        f"try a lower learning rate (lr={cfg.lr}), a smaller max_grad_norm or "
                        f"mixed_precision='no'")
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    for hook in post_step:  # e.g. reapply_masks_: pruned weights stay exactly zero
                        hook(accelerator.unwrap_model(model), state.step + 1)
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1
            running_loss += check.item()
            running_n += 1
            if "attention_mask" in batch:
                tokens_seen += int(batch["attention_mask"].sum()) * n_proc
            if not accelerator.sync_gradients:
                continue

            # ---- one optimizer step done: bookkeeping ----------------------------------------
            state.step += 1
            now = time.perf_counter()
            step_times.append(now - t_step)
            t_step = now
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == total_steps:
                record = {"step": state.step, "epoch": state.epoch, "loss": running_loss / running_n,
                          "lr": scheduler.get_last_lr()[0],
                          "tokens_per_s": tokens_seen / max(1e-9, now - t_start)}
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                _append_log(log_path, record, is_main)
                history.append(record)
                running_loss, running_n = 0.0, 0
            if isinstance(cfg.eval_every, int) and state.step % cfg.eval_every == 0:
                _evaluate(model, eval_fn, state, metric_name, greater, out, history, accelerator)
            if cfg.save_every and state.step % cfg.save_every == 0:
                _checkpoint(out, model, optimizer, scheduler, state, cfg, accelerator, identity)
            if state.step >= total_steps:
                break
        # ---- epoch end ------------------------------------------------------------------------
        epoch_done = state.batches_in_epoch >= batches_per_epoch or state.step >= total_steps
        if epoch_done:
            if cfg.eval_every == "epoch":
                _evaluate(model, eval_fn, state, metric_name, greater, out, history, accelerator)
            state.epoch += 1
            state.batches_in_epoch = 0
            _checkpoint(out, model, optimizer, scheduler, state, cfg, accelerator, identity)
    bar.close()
    train_seconds = time.perf_counter() - t_start

    # ---- finish: best weights back into the model ---------------------------------------------
    accelerator.wait_for_everyone()
    raw = accelerator.unwrap_model(model)
    drop_autocast_wrapper_(raw)  # the caller's model runs in its own precision again
    if engine:  # gather the full state on every rank into the caller's (unsharded) model
        raw = distributed.copy_back_(original, raw, engine)
    if cfg.gradient_checkpointing:
        distributed.disable_gradient_checkpointing_(raw)
    if cfg.load_best_at_end and state.best_step is not None and (out / "best").exists():
        load_weights(raw, out / "best")
    steady = step_times[1:] or step_times
    return TrainResult(
        steps=state.step, epochs_done=state.epoch, train_seconds=train_seconds,
        best_metric=state.best_metric, best_step=state.best_step, metric_name=metric_name,
        history=history, peak_memory_mb=peak_memory_mb(),
        tokens_per_second=tokens_seen / max(1e-9, train_seconds),
        seconds_per_step=sorted(steady)[len(steady) // 2] if steady else 0.0, resumed_from_step=resumed_from)


def _evaluate(model, eval_fn, state: LoopState, metric_name: str, greater: bool, out: Path,
              history: list, accelerator: Accelerator) -> None:
    """Evaluate, log, and save the weights if this is the best score so far."""
    if eval_fn is None:
        return
    raw = accelerator.unwrap_model(model)
    metrics = eval_fn(raw)
    raw.train()
    if metric_name not in metrics:
        raise KeyError(f"eval metrics have no {metric_name!r}; available: {sorted(metrics)}")
    value = float(metrics[metric_name])
    better = state.best_metric is None or (value > state.best_metric if greater else value < state.best_metric)
    if better:
        state.best_metric, state.best_step = value, state.step
        engine = distributed.engine_of(raw, accelerator.distributed_type == DistributedType.DEEPSPEED)
        if engine:  # a collective: every rank gathers, rank 0 writes
            distributed.save_gathered_weights(raw, engine, out / "best", accelerator.is_main_process)
        elif accelerator.is_main_process:
            save_weights(raw, out / "best")
    record = {"step": state.step, "epoch": state.epoch, "eval": metrics, "best": better}
    _append_log(out / "log.jsonl", record, accelerator.is_main_process)
    history.append(record)
    accelerator.print(f"eval step {state.step}: {metric_name}={value:.4f}" + (" (best)" if better else ""))
    accelerator.wait_for_everyone()


def _checkpoint_precision(cfg: TrainConfig, out: Path) -> str | None:
    """The mixed precision a resumable checkpoint in `out` was trained in (None: no checkpoint, no
    resume, or a checkpoint from before this was recorded)."""
    if not (cfg.resume and cfg.mixed_precision == "auto" and has_checkpoint(out)):
        return None
    return read_checkpoint_state(out).get("train_config", {}).get("resolved_mixed_precision")


def _checkpoint(out: Path, model, optimizer, scheduler, state: LoopState, cfg: TrainConfig,
                accelerator: Accelerator, identity: dict) -> None:
    engine = distributed.engine_for(cfg, accelerator.num_processes)
    if engine == "deepspeed":
        return  # DeepSpeed runs write no resume checkpoint (train/distributed.py, docs/scaling.md)
    saved = {**cfg.to_dict(), "resolved_mixed_precision": accelerator.mixed_precision}
    accelerator.wait_for_everyone()
    if engine == "fsdp":  # every rank gathers (collectives), rank 0 writes the 1-process layout
        distributed.save_sharded_checkpoint(out, accelerator.unwrap_model(model), optimizer, scheduler, state,
                                            saved, identity, accelerator.is_main_process)
        accelerator.wait_for_everyone()
        return
    if accelerator.is_main_process:
        save_checkpoint(out, accelerator.unwrap_model(model), optimizer, scheduler, state, saved, identity)
    accelerator.wait_for_everyone()


def _append_log(path: Path, record: dict, is_main: bool) -> None:
    if not is_main:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int, is_main: bool) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    if not is_main or not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    from sparseft.utils.io import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in keep))


"""Sharded training engines for the loop: FSDP2 (`fully_shard`) and DeepSpeed ZeRO, without Accelerate.

`TrainConfig.distributed` picks the engine; `train/loop.py` (the only module importing Accelerate)
calls the plain functions here and builds Accelerate's plugin objects from the dicts they return.

    ddp        Accelerate's default: every process holds the whole model, gradients are all-reduced.
    fsdp       torch's FSDP2 `fully_shard` on each transformer block, then on the root module:
               parameters (frozen base weights, sparse value vectors, LoRA matrices, heads), their
               gradients and the AdamW state are sharded along dim 0 over the processes; each block
               is all-gathered for its forward/backward and freed again.
    deepspeed  ZeRO stage 1/2/3 (+ CPU offload) through Accelerate's DeepSpeed plugin, with the
               config from `deepspeed_config` (DeepSpeed-Chat's layout).

Why our own `fully_shard` and not Accelerate's FSDP plugin: Accelerate 1.15 only switches to FSDP
for GPU-like back ends (`AcceleratorState.__init__` sets `DistributedType.FSDP` inside the
MULTI_GPU / NPU / XPU / ... branch); with `Accelerator(cpu=True)` the plugin is silently dropped
and the model is DDP-wrapped, so the plugin path cannot run (or be tested) on CPU/gloo. FSDP2
itself runs on CPU with gloo, so the loop applies it directly on every device type: one code path.

The replica rule (both engines): the caller's model is never sharded in place. `make_replica`
copies it (FSDP: new parameters over the same storage, which `fully_shard` then replaces by its
own shards; DeepSpeed: a deep copy), shards the copy (FSDP) or hands the copy to DeepSpeed, and at the end
`copy_back_` gathers the full state on every rank (`gather_full_state`: DTensor all-gather for
FSDP; DeepSpeed's fp32 master via `safe_get_full_fp32_param` and `GatheredParameters` for ZeRO-3)
and copies it into the caller's model, checking every name and shape. So the caller's model,
`SparseDelta` value vectors and peft adapters hold the trained weights after `train()` returns on
every rank, and a diff / adapter saved from them is complete: an empty or partitioned gather (the
ecosystem's "empty adapter under ZeRO-3") fails loudly instead of being saved. On a GPU the copy
lives sharded on the device while the caller's model stays in host memory, where it was loaded.

Sharded vs replicated: the sparse value vectors are sharded with the rest of their block (FSDP
treats them like any parameter; DeepSpeed partitions them); the `indices` buffers are replicated
(buffers are not sharded). Both are O(k); sharding them costs nothing extra and keeps the AdamW
state 1/N per process.

Resume under fsdp: every rank gathers the trainable tensors and the AdamW moments, rank 0 writes
the 1-process checkpoint layout (`save_sharded_checkpoint`); on resume the weights are loaded into
the plain model before it is sharded and the moments are cut back into shards
(`shard_optimizer_state_fn`), so a resumed run reaches the same weights bit for bit.

Limits (stated, checked): no resume checkpoints under deepspeed (the loop skips them and refuses
to resume from an existing one); no `post_step` hooks (pruning masks, regrow).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn as nn

from sparseft.utils.dist import is_main_process

DISTRIBUTED = ("ddp", "fsdp", "deepspeed")
BASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ZERO_STAGES = (1, 2, 3)


# ---- set-up shared by every engine: frozen-base dtype, activation checkpointing -----------------

@torch.no_grad()
def cast_frozen_(model: nn.Module, base_dtype: str) -> int:
    """Cast the frozen floating-point parameters (requires_grad=False) to `base_dtype`, in place.

    Trainable parameters (sparse value vectors, LoRA matrices, heads) keep their dtype (fp32), so
    their gradients and AdamW state stay fp32. A model with no frozen parameter (full fine-tuning)
    is cast whole: the weights themselves are then bf16 (as `torch_dtype=bf16` in transformers).
    Buffers (rotary frequencies, ...) are left alone. Returns the number of tensors cast.
    """
    dtype = BASE_DTYPES[base_dtype]
    if dtype == torch.float32:
        return 0
    params = [p for p in model.parameters() if p.is_floating_point()]
    frozen = [p for p in params if not p.requires_grad]
    chosen = frozen or params
    for p in chosen:
        p.data = p.data.to(dtype)
    return len(chosen)


def enable_gradient_checkpointing_(model: nn.Module) -> None:
    """Recompute each block's activations in backward (transformers' non-reentrant checkpointing).

    Non-reentrant checkpointing needs no input that requires grad, so it works with a frozen
    embedding (sparse / LoRA modes) and under FSDP2.
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(target, "gradient_checkpointing_enable"):
        raise ValueError(f"gradient_checkpointing: {type(target).__name__} is not a transformers model "
                         f"(it has no gradient_checkpointing_enable)")
    if getattr(target.config, "use_cache", None):
        target.config.use_cache = False
    target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_gradient_checkpointing_(model: nn.Module) -> None:
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(target, "is_gradient_checkpointing", False):
        target.gradient_checkpointing_disable()


# ---- FSDP2 ---------------------------------------------------------------------------------------

def block_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that get their own FSDP unit: transformers' `_no_split_modules` classes
    (decoder / encoder layers), else the entries of the largest nn.ModuleList."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def shard_fsdp_(model: nn.Module, *, device: torch.device, precision: str = "no", offload: bool = False) -> None:
    """FSDP2 `fully_shard` on each block, then on the root (in place; needs a process group).

    precision bf16/fp16: parameters are all-gathered and computed in that dtype while the
    sharded originals (fp32 values, heads) stay as they are; gradients are reduced in fp32.
    offload: keep sharded parameters, gradients and optimizer state in CPU memory (GPU only).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if offload and device.type == "cpu":
        raise ValueError("offload=true with distributed=fsdp moves shards from the GPU to the CPU; "
                         "on a CPU-only machine there is nothing to offload (set offload=false)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = (MixedPrecisionPolicy(param_dtype=BASE_DTYPES[precision], reduce_dtype=torch.float32)
          if precision in ("bf16", "fp16") else MixedPrecisionPolicy())
    kwargs = {"mesh": mesh, "mp_policy": mp}
    if offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for block in block_modules(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


# ---- the replica: what the engine trains ----------------------------------------------------------

def make_replica(model: nn.Module, groups: list[dict], *, engine: str, device: torch.device,
                 precision: str = "no", offload: bool = False, zero_stage: int = 2
                 ) -> tuple[nn.Module, list[dict]]:
    """A deep copy of `model` prepared for `engine` and the optimizer groups remapped onto it.

    Args:
        groups: optimizer param groups over `model`'s parameters (each parameter must be one of
            `model.named_parameters()`); returned over the replica's (sharded) parameters.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [i for g in groups for i, p in enumerate(g["params"]) if id(p) not in names]
    if missing:
        raise ValueError("optimizer param groups hold tensors that are not parameters of the model")
    # fsdp: parameters alias the caller's storage (fully_shard copies each rank's chunk and
    # rebinds, leaving the caller's tensors untouched): no second full host copy. DeepSpeed may
    # write parameters in place (ZeRO-1/2), so it gets a real copy.
    replica = aliased_copy(model) if engine == "fsdp" else copy.deepcopy(model)
    if engine == "fsdp":
        shard_fsdp_(replica, device=device, precision=precision, offload=offload)
    elif engine == "deepspeed":
        if zero_stage == 3:
            _register_external_weights(replica)
    else:
        raise ValueError(f"make_replica: unknown engine {engine!r}; valid: fsdp, deepspeed")
    params = dict(replica.named_parameters())
    # empty groups dropped: DeepSpeed removes them, and a scheduler built on the optimizer must
    # then see the same number of groups
    new_groups = [{**g, "params": [params[names[id(p)]] for p in g["params"]]} for g in groups if g["params"]]
    if engine == "fsdp" and is_main_process():
        local = sum(_local_numel(p) for p in params.values())
        total = sum(p.numel() for p in params.values())
        print(f"fsdp: {len(block_modules(replica)) + 1} FSDP units; this process holds {local:,} of {total:,} "
              f"parameter entries", file=sys.stderr, flush=True)
    return replica, new_groups


def aliased_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters are new `nn.Parameter`s over the *same storage*
    (buffers are copied; tied weights stay tied). `fully_shard` on it copies only each rank's
    chunk and rebinds the copy's parameters, so the caller's weights are neither duplicated nor
    changed: a sharded replica for a short job (mask selection) without a second host copy."""
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def _local_numel(p: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    return p.to_local().numel() if isinstance(p, DTensor) else p.numel()


def _register_external_weights(model: nn.Module) -> None:
    """ZeRO-3 gathers a parameter only around the forward of the module that owns it. SparseDelta
    reads `base.weight` without calling `base`'s forward, so tell DeepSpeed it uses that weight."""
    import deepspeed

    from sparseft.sft.layer import SparseDelta

    for module in model.modules():
        if isinstance(module, SparseDelta):
            deepspeed.zero.register_external_parameter(module, module.base.weight)


def gather_full_state(model: nn.Module, engine: str, skip: set[str] = frozenset()) -> dict[str, torch.Tensor]:
    """{name: full CPU tensor} of every parameter and buffer, on every rank (a collective: all
    ranks must call it). fsdp: DTensor all-gather; deepspeed: the fp32 master of trainable
    parameters (`safe_get_full_fp32_param`, also right under bf16), `GatheredParameters` for the
    frozen ones (a no-op below ZeRO-3). Names in `skip` are not gathered (same set on all ranks)."""
    gather = _gather_deepspeed if engine == "deepspeed" else _gather_plain
    state = {name: gather(p) for name, p in model.named_parameters() if name not in skip}
    state.update({name: _gather_plain(b) for name, b in model.named_buffers() if name not in skip})
    return state


def _gather_plain(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    full = t.full_tensor() if isinstance(t, DTensor) else t
    return full.detach().cpu().clone()


def _gather_deepspeed(p: torch.Tensor) -> torch.Tensor:
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    if p.requires_grad:
        full = safe_get_full_fp32_param(p)
        if full is not None:
            return full.detach().cpu().clone()
    with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
        return p.data.detach().cpu().clone()


@torch.no_grad()
def copy_state_into_(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "gathered state") -> None:
    """Copy `state` into `model`'s parameters and buffers (in place, each keeping its dtype).

    Every name must be present with the model's exact shape: a missing, extra or empty
    (still-partitioned) tensor raises ValueError instead of leaving stale weights behind.
    """
    own = dict(model.named_parameters())
    own.update(dict(model.named_buffers()))
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"{source} does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, t in own.items():
        full = state[name]
        if tuple(full.shape) != tuple(t.shape):
            raise ValueError(f"{source}: {name} has shape {tuple(full.shape)}, the model's is {tuple(t.shape)} "
                             f"(a partitioned ZeRO-3 / FSDP tensor that was not gathered?)")
        t.copy_(full.to(device=t.device, dtype=t.dtype))


def copy_back_(original: nn.Module, replica: nn.Module, engine: str) -> nn.Module:
    """Gather the replica's full state (collective) into `original`; returns `original`."""
    copy_state_into_(original, gather_full_state(replica, engine), source=f"the {engine} replica's state")
    return original


def gathered_trainable(model: nn.Module, engine: str) -> dict[str, torch.Tensor]:
    """`checkpoint.trainable_state` of a sharded model, as full CPU tensors on every rank (a
    collective): every non-frozen state_dict entry, tied tensors once."""
    from sparseft.train.checkpoint import frozen_names

    frozen, seen, out = frozen_names(model), set(), {}
    state = gather_full_state(model, engine, skip=frozen)  # the frozen base is not gathered
    for name, t in model.state_dict(keep_vars=True).items():  # on every rank: FSDP's hooks may communicate
        if name in frozen or id(t) in seen:
            continue
        seen.add(id(t))
        out[name] = state[name] if name in state else t.detach().cpu()  # e.g. the swaps' empty guards
    return out


def save_gathered_weights(model: nn.Module, engine: str, path: str | Path, is_main: bool) -> None:
    """`checkpoint.save_weights` for a sharded model: every rank gathers (a collective), rank 0
    writes the checkpoint layout (`checkpoint.save_weights_from_state`), which
    `checkpoint.load_weights` reads into the plain model."""
    from sparseft.train.checkpoint import save_weights_from_state

    out = gathered_trainable(model, engine)
    if is_main:
        save_weights_from_state(out, path)


# ---- resume checkpoints of an FSDP run: full tensors on disk, shards in memory -------------------

def gathered_optimizer_state(optimizer) -> dict:
    """The optimizer's state_dict with every DTensor (AdamW moments of sharded parameters)
    all-gathered into a full CPU tensor: the 1-process layout (a collective, in state order)."""
    from torch.distributed.tensor import DTensor

    sd = optimizer.state_dict()
    state = {}
    for idx in sorted(sd["state"]):
        state[idx] = {k: (v.full_tensor().cpu() if isinstance(v, DTensor) else v) for k, v in sd["state"][idx].items()}
    return {**sd, "state": state}


def shard_optimizer_state_fn(optimizer):
    """A function mapping a saved full optimizer state onto `optimizer`'s sharded parameters:
    each full moment becomes a DTensor with its parameter's mesh and placements, this rank's
    chunk taken locally (no communication; FSDP2 and DTensor cut the same torch.chunk rows)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]

    def shard(sd: dict) -> dict:
        order = [i for group in sd["param_groups"] for i in group["params"]]
        if len(order) != len(params):
            raise ValueError(f"the saved optimizer state has {len(order)} parameters, this run {len(params)}")
        by_index = dict(zip(order, params))
        state = {}
        for idx, entry in sd["state"].items():
            p = by_index[idx]
            state[idx] = {k: (distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                              if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape else v)
                          for k, v in entry.items()}
        return {**sd, "state": state}

    return shard


def save_sharded_checkpoint(out: str | Path, model: nn.Module, optimizer, scheduler, state, train_config: dict,
                            identity: dict | None, is_main: bool) -> None:
    """`checkpoint.save_checkpoint` for an FSDP run: every rank gathers the trainable tensors and
    the optimizer moments (collectives), rank 0 writes the same layout as a 1-process run."""
    from sparseft.train.checkpoint import frozen_names, save_checkpoint_from_state

    trainable = gathered_trainable(model, "fsdp")
    optimizer_state = gathered_optimizer_state(optimizer)
    if is_main:
        save_checkpoint_from_state(out, trainable, optimizer_state, scheduler, state, train_config, identity,
                                   frozen_excluded=len(frozen_names(model)))


# ---- DeepSpeed configuration ------------------------------------------------------------------------

def deepspeed_config(*, zero_stage: int, offload: bool, batch_size: int, grad_accum: int,
                     num_processes: int, max_grad_norm: float | None) -> dict:
    """DeepSpeed JSON config in DeepSpeed-Chat's training layout (`get_train_ds_config`).

    Concrete batch numbers (our loop prepares no DataLoader for Accelerate to read "auto" from);
    bf16/fp16 "auto" so Accelerate fills them from the run's mixed precision. ZeRO-3 sets
    `stage3_gather_16bit_weights_on_model_save` so that Accelerate's `get_state_dict` returns
    real tensors instead of the empty partitions behind the "empty adapter" bug.
    """
    if zero_stage not in (0, *ZERO_STAGES):
        raise ValueError(f"zero_stage must be one of (0, 1, 2, 3), got {zero_stage}")
    if offload and zero_stage == 0:
        raise ValueError("offload needs zero_stage 1, 2 or 3 (ZeRO offloads optimizer state / parameters)")
    for name, value in (("batch_size", batch_size), ("grad_accum", grad_accum), ("num_processes", num_processes)):
        if value < 1:
            raise ValueError(f"deepspeed_config: {name} must be >= 1, got {value}")
    device = "cpu" if offload else "none"
    zero = {"stage": zero_stage,
            "offload_optimizer": {"device": device},
            "offload_param": {"device": device if zero_stage == 3 else "none"},
            "stage3_param_persistence_threshold": 1e4,
            "stage3_max_live_parameters": 3e7,
            "stage3_prefetch_bucket_size": 3e7,
            "stage3_gather_16bit_weights_on_model_save": zero_stage == 3,
            "memory_efficient_linear": False}
    return {"train_batch_size": batch_size * grad_accum * num_processes,
            "train_micro_batch_size_per_gpu": batch_size,
            "gradient_accumulation_steps": grad_accum,
            "gradient_clipping": float(max_grad_norm or 0.0),
            "steps_per_print": 10**9,  # our loop logs; DeepSpeed's own print stays quiet
            "zero_optimization": zero,
            "zero_force_ds_cpu_optimizer": False,  # the loop builds torch AdamW; allow it with offload
            "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto", "loss_scale_window": 100},
            "prescale_gradients": False,
            "wall_clock_breakdown": False}


def deepspeed_plugin_kwargs(cfg, num_processes: int) -> dict:
    """Keyword arguments for Accelerate's `DeepSpeedPlugin` from a TrainConfig (built in loop.py)."""
    ds = deepspeed_config(zero_stage=cfg.zero_stage, offload=cfg.offload, batch_size=cfg.batch_size,
                          grad_accum=cfg.grad_accum, num_processes=num_processes, max_grad_norm=cfg.max_grad_norm)
    return {"hf_ds_config": ds, "zero3_init_flag": False}


def require_engine(engine: str) -> None:
    """ValueError with the install hint when DeepSpeed is needed but missing."""
    import importlib.util

    if engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ValueError("distributed=deepspeed needs DeepSpeed, which is not installed: pip install deepspeed "
                         "(see docs/scaling.md). Without it use distributed=fsdp or ddp.")


# ---- what the loop calls ------------------------------------------------------------------------

def prepare_model_(model: nn.Module, cfg) -> None:
    """Every engine: frozen weights in `cfg.base_dtype`, activation checkpointing if asked."""
    cast_frozen_(model, cfg.base_dtype)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing_(model)


def engine_for(cfg, num_processes: int) -> str | None:
    """'fsdp' / 'deepspeed' when the loop must train a sharded replica; None for Accelerate's
    own path (ddp, or fsdp in a single process: nothing to shard)."""
    if cfg.distributed == "deepspeed":
        return "deepspeed"
    if cfg.distributed == "fsdp" and num_processes > 1:
        return "fsdp"
    return None


def check_engine_supported(engine: str, *, post_step, resume_checkpoint: bool) -> None:
    """The stated limits of the sharded engines, as one-line errors (fsdp resumes; deepspeed not)."""
    if post_step:
        raise ValueError(f"distributed={engine} does not run post_step hooks (pruning masks, sparse regrow): "
                         f"they edit whole weights, which are sharded; use distributed=ddp")
    if resume_checkpoint and engine == "deepspeed":
        raise ValueError(f"distributed={engine} cannot resume from the checkpoint in output_dir (DeepSpeed runs "
                         f"write none; fsdp and ddp runs do): set resume=false or use another output_dir")


def engine_of(model: nn.Module, deepspeed_active: bool) -> str | None:
    """The engine a model being trained runs under (for saving best weights mid-run)."""
    from torch.distributed.fsdp import FSDPModule

    if deepspeed_active:
        return "deepspeed"
    return "fsdp" if isinstance(model, FSDPModule) else None

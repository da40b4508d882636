"""Multi-process and DeepSpeed launch for chat SFT: DeepSpeed-Chat flags -> launcher + config files.

`sparseft chat-sft` writes its recipe to <output dir>/chat_sft_recipe.yaml and, when it needs more
than one process or DeepSpeed, starts a launcher that runs `sparseft run <recipe>` in every process:

  * `--num-processes N` (ZeRO stage 0, `--distributed ddp` or `fsdp`): `python -m
    torch.distributed.run --standalone --nproc_per_node N` (torchrun). On CPU the processes talk
    over gloo. (We do not use `accelerate launch --cpu --num_processes N` for this: it starts a
    single process on CPU.)
  * `--zero_stage 1|2|3` (+ `--offload`): `accelerate launch --config_file accelerate_config.yaml`,
    whose DeepSpeed section points to ds_config.json, written in DeepSpeed-Chat's layout
    (`get_train_ds_config`) by the training loop's own `sparseft.train.distributed.deepspeed_config`:
    micro-batch per GPU, gradient accumulation, clipping, ZeRO stage, optimizer (and, for stage 3,
    parameter) offload to CPU, ZeRO-3 16-bit weight gathering on save; bf16/fp16 left "auto" so
    Accelerate fills them from the run's mixed precision. The recipe says `distributed: deepspeed`,
    and each process's loop builds the same config from its TrainConfig. Needs `pip install
    deepspeed`; without it the CLI stops with a message saying so.

Inside each process the training loop's Accelerator picks the process group up from the
environment the launcher exports (WORLD_SIZE, RANK, ...); see docs/scaling.md.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import yaml

from sparseft.train.distributed import deepspeed_config as _train_deepspeed_config
from sparseft.utils.io import atomic_write_json, atomic_write_text

ZERO_STAGES = (0, 1, 2, 3)


def in_launched_process() -> bool:
    """True inside a torchrun / accelerate-launched worker (the launcher exported WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def launch_env(environ: dict | None = None, *, deepspeed: bool = False) -> dict:
    """Environment for the launched workers.

    On machines without CUDA, Accelerate only sets up CPU data parallelism (gloo) when told to
    use the CPU (ACCELERATE_USE_CPU=true, what `accelerate launch --cpu` exports); otherwise
    every torchrun worker silently trains alone as a single-process job. DeepSpeed is the
    exception: Accelerate switches DeepSpeed off when ACCELERATE_USE_CPU is set, and the loop
    gives it a gloo process group itself (train/loop.py `_engine_plugins`).
    """
    import torch

    env = dict(os.environ if environ is None else environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if deepspeed:
        env.pop("ACCELERATE_USE_CPU", None)
    elif not torch.cuda.is_available():
        env.setdefault("ACCELERATE_USE_CPU", "true")
    return env


def check_cpu_distributed() -> None:
    """ValueError when running as one of several CPU workers without ACCELERATE_USE_CPU set
    (see `launch_env`): the processes would not synchronise gradients."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    flag = any(os.environ.get(name, "").lower() in ("1", "true", "yes")
               for name in ("ACCELERATE_USE_CPU", "ACCELERATE_USE_DEEPSPEED"))  # DeepSpeed: gloo group of its own
    if world > 1 and not torch.cuda.is_available() and not flag:
        raise ValueError(f"this is one of {world} CPU worker processes but ACCELERATE_USE_CPU is not set, so "
                         f"Accelerate would run each process as an independent single-process job. Launch "
                         f"with `sparseft chat-sft --num-processes N` or export ACCELERATE_USE_CPU=true.")


def require_deepspeed(zero_stage: int) -> None:
    """ValueError with the install hint when DeepSpeed is missing."""
    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError(f"--zero_stage {zero_stage} needs DeepSpeed, which is not installed: "
                         f"pip install deepspeed (it targets CUDA GPUs). Without DeepSpeed use "
                         f"--zero_stage 0 (plain data parallel, e.g. --num-processes 2).")


def deepspeed_config(*, zero_stage: int, offload: bool, batch_size: int, grad_accum: int,
                     num_processes: int, max_grad_norm: float | None) -> dict:
    """DeepSpeed JSON config in DeepSpeed-Chat's training layout: the training loop's own
    (`sparseft.train.distributed.deepspeed_config`), so the file and the run agree."""
    return _train_deepspeed_config(zero_stage=zero_stage, offload=offload, batch_size=batch_size,
                                   grad_accum=grad_accum, num_processes=num_processes, max_grad_norm=max_grad_norm)


def write_accelerate_config(directory: str | Path, *, zero_stage: int, offload: bool, batch_size: int,
                            grad_accum: int, num_processes: int, max_grad_norm: float | None) -> Path:
    """Write ds_config.json + accelerate_config.yaml into `directory`; returns the YAML path."""
    directory = Path(directory).resolve()
    ds_path = directory / "ds_config.json"
    atomic_write_json(ds_path, deepspeed_config(zero_stage=zero_stage, offload=offload, batch_size=batch_size,
                                                grad_accum=grad_accum, num_processes=num_processes,
                                                max_grad_norm=max_grad_norm))
    acc = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED",
           "deepspeed_config": {"deepspeed_config_file": str(ds_path), "zero3_init_flag": False},
           "machine_rank": 0, "num_machines": 1, "num_processes": num_processes, "rdzv_backend": "static",
           "same_network": True, "use_cpu": False, "main_training_function": "main"}
    path = directory / "accelerate_config.yaml"
    atomic_write_text(path, yaml.safe_dump(acc, sort_keys=False))
    return path


def launch_command(recipe_path: str | Path, *, num_processes: int, accelerate_config: str | Path | None = None
                   ) -> list[str]:
    """Command that runs `sparseft run <recipe>` in `num_processes` processes."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    tail = ["-m", "sparseft.cli.main", "run", str(recipe_path)]
    if accelerate_config is not None:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
                "--num_processes", str(num_processes), *tail]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(num_processes), *tail]

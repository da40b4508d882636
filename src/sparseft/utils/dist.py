"""Process rank helpers that need no Accelerate import (launchers set RANK / WORLD_SIZE)."""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on rank 0 (or when not launched multi-process): the one process that writes files."""
    return rank() == 0


def local_device():
    """This process's device: cuda:LOCAL_RANK where CUDA is available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")

"""Describe the run environment for reports and benchmark records: commit, machine, CPU units, versions.

`hardware` (utils/hardware.py) says which ISA extensions and matrix units the CPU has (AVX2,
AVX-512, VNNI, AVX512-BF16, AMX, NEON/SVE/BF16) and its hardware class: speed numbers only mean
something next to it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from sparseft.utils.hardware import detect

PACKAGES = ("torch", "transformers", "accelerate", "peft", "safetensors", "gguf", "onnxruntime", "torchao",
            "sparseft")


def git_commit(cwd: str | Path | None = None) -> dict[str, object]:
    """{'commit': sha or None, 'dirty': bool or None} for the repo containing `cwd`."""
    cwd = str(cwd or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_environment() -> dict[str, object]:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, object] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "hardware": detect().to_dict(),
        "versions": versions,
    }
    return info

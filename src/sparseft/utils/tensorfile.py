"""Read a safetensors file, turning a missing, truncated or corrupt file into one clear error.

    tensors = load_tensors("runs/sft/diff/diff.safetensors")

safetensors raises `SafetensorError: Error while deserializing header: ...` without the file
name; `TensorFileError` (a ValueError, so the CLI prints one line) names the file and the likely
cause. A missing file stays a FileNotFoundError naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


class TensorFileError(ValueError):
    """A safetensors file that cannot be read (truncated, corrupt, not safetensors)."""


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as exc:
        raise TensorFileError(f"{path}: cannot read the tensors, the file is truncated or corrupt ({exc})") from None

"""Training checkpoints for resume: model, optimizer, scheduler, RNG and loop position.

Layout of `<output_dir>/checkpoints/last/` (swapped in atomically as a whole folder):
    model.safetensors   full model state (safetensors `save_model` handles tied weights)
    optimizer.pt        optimizer state dict   (loaded with weights_only=True)
    scheduler.pt        scheduler state dict   (weights_only=True)
    rng.pt              torch CPU / CUDA RNG states (weights_only=True)
    state.json          step, epoch, batches done in the epoch, best metric, the TrainConfig
A run killed at any point resumes from the last complete checkpoint and, since the data order is
a pure function of (seed, epoch) and RNG states are restored, reaches the same weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from sparseft.utils.io import atomic_dir


@dataclass
class LoopState:
    step: int = 0                 # optimizer steps done
    epoch: int = 0                # current epoch (0-based)
    batches_in_epoch: int = 0     # micro-batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    extra: dict = field(default_factory=dict)


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints" / "last"


def save_checkpoint(output_dir: str | Path, model, optimizer, scheduler, state: LoopState,
                    train_config: dict) -> Path:
    path = checkpoint_dir(output_dir)
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"loop": asdict(state), "train_config": train_config},
                                                   indent=2))
    return path


def has_checkpoint(output_dir: str | Path) -> bool:
    return (checkpoint_dir(output_dir) / "state.json").exists()


def load_checkpoint(output_dir: str | Path, model, optimizer, scheduler) -> tuple[LoopState, dict]:
    """Restore everything in place; returns (loop state, the TrainConfig dict it was saved with)."""
    path = checkpoint_dir(output_dir)
    meta = json.loads((path / "state.json").read_text())
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return LoopState(**meta["loop"]), meta["train_config"]


def save_weights(model, path: str | Path) -> None:
    """Best-model weights (no optimizer), written atomically."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / "model.safetensors"))


def load_weights(model, path: str | Path) -> None:
    load_model(model, str(Path(path) / "model.safetensors"))

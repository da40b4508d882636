"""Training checkpoints for resume: trainable tensors, optimizer, scheduler, RNG and loop position.

Layout of `<output_dir>/checkpoints/last/` (swapped in atomically as a whole folder):
    trainable.safetensors  every state_dict tensor except frozen parameters (requires_grad=False):
                           all weights in full fine-tuning; value vectors, indices, new heads and
                           buffers in sparse fine-tuning; the adapter (plus buffers) with LoRA.
                           The frozen base is not copied: `state.json` references it by id and
                           fingerprint, and resume refuses a base with another fingerprint.
    optimizer.pt           optimizer state dict   (loaded with weights_only=True)
    scheduler.pt           scheduler state dict   (weights_only=True)
    rng.pt                 torch CPU / CUDA RNG states (weights_only=True)
    state.json             loop position, the TrainConfig, the run identity (train/identity.py)
    manifest.json          size and sha256 of every file above, written last
`<output_dir>/best/` (the best evaluation's weights) holds trainable.safetensors + manifest.json.

A run killed at any point resumes from the last complete checkpoint and, since the data order is
a pure function of (seed, epoch) and RNG states are restored, reaches the same weights.
A missing, truncated or corrupt file raises `CheckpointError` (a ValueError: one CLI line) that
names the file; `prepare_run_dir` removes what killed saves left behind (utils/io.clean_stale).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sparseft.train.identity import check_resume
from sparseft.utils.io import atomic_dir, clean_stale, clean_stale_in

WEIGHTS = "trainable.safetensors"
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or does not fit the model."""


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


def prepare_run_dir(output_dir: str | Path) -> list[Path]:
    """Before a run starts (main process only): remove temporary folders and files that killed
    atomic saves left in `output_dir` and its `checkpoints/` (e.g. `.last.1a2b3c4d.tmp`, a full
    copy of trainable state + optimizer), and put back a checkpoint caught between the two
    renames of the fallback swap. Only sparseft's own temporary names are touched."""
    out = Path(output_dir)
    return (clean_stale(checkpoint_dir(out)) + clean_stale(out / "best")
            + clean_stale_in(out / "checkpoints") + clean_stale_in(out))


def save_checkpoint(output_dir: str | Path, model, optimizer, scheduler, state: LoopState,
                    train_config: dict, identity: dict | None = None) -> Path:
    return save_checkpoint_from_state(output_dir, trainable_state(model), optimizer.state_dict(), scheduler,
                                      state, train_config, identity,
                                      frozen_excluded=len(frozen_names(model)))


def save_checkpoint_from_state(output_dir: str | Path, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                               scheduler, state: LoopState, train_config: dict, identity: dict | None = None,
                               *, frozen_excluded: int = 0) -> Path:
    """`save_checkpoint` for tensors gathered elsewhere (a sharded run's full trainable state and
    optimizer state): the same layout, so either kind of run reads it."""
    path = checkpoint_dir(output_dir)
    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in trainable.items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt", "sparseft": "trainable", "frozen_excluded": str(frozen_excluded)})
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(
            {"loop": asdict(state), "train_config": train_config, "identity": identity}, indent=2))
        write_manifest(tmp)
    return path


def has_checkpoint(output_dir: str | Path) -> bool:
    return (checkpoint_dir(output_dir) / "state.json").exists()


def read_checkpoint_state(output_dir: str | Path) -> dict:
    """The checkpoint's state.json: {"loop", "train_config", "identity"}."""
    return _read_json(checkpoint_dir(output_dir) / "state.json")


def load_checkpoint(output_dir: str | Path, model, optimizer, scheduler,
                    identity: dict | None = None, *, optimizer_state_fn=None) -> tuple[LoopState, dict]:
    """Restore everything in place; returns (loop state, the TrainConfig dict it was saved with).

    With `identity`, the checkpoint must have been written by a run with the same identity
    (else `ResumeMismatch`, before anything is loaded). `model=None` skips the weights (a sharded
    run loads them into its plain model first: `load_checkpoint_weights`); `optimizer_state_fn`
    maps the saved optimizer state before loading (full tensors -> this rank's shards).
    """
    path = checkpoint_dir(output_dir)
    meta = _read_json(path / "state.json")
    if identity is not None:
        check_resume(meta.get("identity"), identity, path)
    verify_manifest(path)
    if model is not None:
        load_trainable(model, path / WEIGHTS)
    for name, target in (("optimizer.pt", optimizer), ("scheduler.pt", scheduler)):
        try:
            saved = _torch_load(path / name)
            if name == "optimizer.pt" and optimizer_state_fn is not None:
                saved = optimizer_state_fn(saved)
            target.load_state_dict(saved)
        except (ValueError, KeyError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{path / name} does not fit this run ({_first_line(exc)}); "
                                  f"{_way_out(path)}") from None
    rng = _torch_load(path / "rng.pt")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    try:
        return LoopState(**meta["loop"]), meta["train_config"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path / 'state.json'} is not a sparseft checkpoint state ({exc}); "
                              f"{_way_out(path)}") from None


def load_checkpoint_weights(output_dir: str | Path, model, identity: dict | None = None) -> None:
    """Only the trainable tensors of the checkpoint into `model` (identity and manifest checked)."""
    path = checkpoint_dir(output_dir)
    if identity is not None:
        check_resume(_read_json(path / "state.json").get("identity"), identity, path)
    verify_manifest(path)
    load_trainable(model, path / WEIGHTS)


def save_weights(model, path: str | Path) -> None:
    """Best-model weights (trainable tensors only, no optimizer), written atomically."""
    with atomic_dir(Path(path)) as tmp:
        save_trainable(model, tmp / WEIGHTS)
        write_manifest(tmp)


def save_weights_from_state(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """`save_weights` for tensors gathered elsewhere (e.g. a sharded engine's full state): the
    same layout (trainable.safetensors + manifest.json), so `load_weights` reads it."""
    with atomic_dir(Path(path)) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt", "sparseft": "trainable"})
        write_manifest(tmp)


def load_weights(model, path: str | Path) -> None:
    path = Path(path)
    verify_manifest(path)
    load_trainable(model, path / WEIGHTS)


# ---- trainable tensors ------------------------------------------------------------------------

def frozen_names(model: torch.nn.Module) -> set[str]:
    """state_dict names of parameters with requires_grad=False (tied aliases included)."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: tensor} of every state_dict entry that is not a frozen parameter; a tensor shared
    under several names (tied weights) is kept once, under its first name."""
    frozen = frozen_names(model)
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if name in frozen:
            continue
        key = _storage_key(t)
        if key is not None and key in seen:
            continue
        seen.add(key)
        out[name] = t.contiguous()
    return out


def save_trainable(model: torch.nn.Module, file: Path) -> None:
    tensors = trainable_state(model)
    save_file(tensors, str(file), metadata={"format": "pt", "sparseft": "trainable",
                                            "frozen_excluded": str(len(frozen_names(model)))})


def load_trainable(model: torch.nn.Module, file: Path) -> None:
    """Load `save_trainable` output; every non-frozen tensor of `model` must be covered."""
    try:
        tensors = load_file(str(file))
    except Exception as exc:  # SafetensorError, OSError: truncated, corrupt, missing
        raise CheckpointError(f"{file}: cannot read ({_first_line(exc)}); {_way_out(file.parent)}") from None
    state = model.state_dict()
    loaded_storage = {_storage_key(state[n]) for n in tensors if n in state}
    missing = sorted(n for n in set(state) - set(tensors) - frozen_names(model)
                     if _storage_key(state[n]) not in loaded_storage)  # a tied alias counts as loaded
    unexpected = sorted(set(tensors) - set(state))
    if missing or unexpected:
        raise CheckpointError(f"{file} does not match the model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}; {_way_out(file.parent)}")
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{file} does not match the model ({_first_line(exc)}); "
                              f"{_way_out(file.parent)}") from None


def _storage_key(t: torch.Tensor):
    if t.numel() == 0:
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


# ---- integrity ----------------------------------------------------------------------------------

def write_manifest(folder: Path) -> None:
    """manifest.json: size and sha256 of every other file in `folder` (written last: a folder
    without it is incomplete)."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=2))


def verify_manifest(folder: Path) -> None:
    """CheckpointError naming the file unless every file listed in manifest.json is intact."""
    if not (folder / MANIFEST).exists():
        raise CheckpointError(f"{folder / MANIFEST} is missing: the checkpoint is incomplete or was "
                              f"written by an older sparseft; {_way_out(folder)}")
    manifest = _read_json(folder / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{folder / MANIFEST} has no 'files' table; {_way_out(folder)}")
    for name, info in files.items():
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing; {_way_out(folder)}")
        size = f.stat().st_size
        if size != info.get("size"):
            raise CheckpointError(f"{f} is truncated or changed: {size} bytes, {MANIFEST} says "
                                  f"{info.get('size')}; {_way_out(folder)}")
        if _sha256(f) != info.get("sha256"):
            raise CheckpointError(f"{f} is corrupt: its sha256 differs from {MANIFEST}; {_way_out(folder)}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; {_way_out(path.parent)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({_first_line(exc)}); "
                              f"{_way_out(path.parent)}") from None


def _torch_load(path: Path):
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # zip / pickle errors on truncated or corrupt files
        raise CheckpointError(f"{path}: cannot read ({_first_line(exc)}); {_way_out(path.parent)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _way_out(folder: Path) -> str:
    return f"delete {folder} or train afresh with --no-resume (resume: false)"

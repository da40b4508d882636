"""Output folders: refuse to overwrite or delete what sparseft did not write, or what it reads.

Every verb that writes a folder goes through one of two calls here (see docs/foundation.md,
"Errors and safety"):

    prepare_output_dir(path, owner=..., overwrite=..., inputs=[...])   # a run folder, written into
    with replace_dir(path, owner=..., overwrite=...) as tmp: ...        # an artifact, replaced whole

Rules, checked before any work is done:
  - `path` must not be a file, and its folder (or the nearest existing parent) must be writable;
  - `path` must not be, or contain, one of `inputs` (the model / diff being read) - not even
    with `overwrite`: replacing it would delete the input;
  - a non-empty `path` is reused only if sparseft made it for the same `owner`: the marker file
    `.sparseft-output.json` (written into every folder made here) names the owner, e.g. the
    stage list of a recipe ("run:train+eval+save") or a verb ("export"). The nearest marker
    counts, so `runs/x/model` is covered by the marker of the run folder `runs/x`. With
    `owner=None` (library calls) any sparseft marker is enough. Otherwise `overwrite=True`
    (CLI `--overwrite`) is needed. Reusing its own run folder is what resume relies on.
OS errors while writing become `OutputDirError` (a ValueError: one line in the CLI) naming the
folder, e.g. a full disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from sparseft.utils.io import atomic_dir

MARKER = ".sparseft-output.json"
PathLike = str | os.PathLike


class OutputDirError(ValueError):
    """The output folder cannot or must not be written (the message names it and the way out)."""


def run_owner(stage_methods: Sequence[str]) -> str:
    """The owner of a run folder: its recipe's stage list, e.g. 'run:train+eval+save'."""
    return "run:" + "+".join(stage_methods)


def read_marker(path: PathLike) -> dict | None:
    """The marker of the folder `path` itself (or what a pre-marker sparseft left), or None."""
    try:
        data = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return _legacy_marker(Path(path))
    return data if isinstance(data, dict) and data.get("producer") == "sparseft" else None


def _legacy_marker(path: Path) -> dict | None:
    """Folders written before the marker existed: a run folder (its recipe.yaml names the
    stages, so the owner is known) or an artifact with sparseft's own files (owner unknown)."""
    recipe = path / "recipe.yaml"
    if recipe.is_file() and ((path / "metrics.json").exists() or (path / "log.jsonl").exists()):
        import yaml

        try:
            stages = (yaml.safe_load(recipe.read_text()) or {}).get("stages") or []
            methods = [s["method"] for s in stages]
        except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError):
            return None
        return {"producer": "sparseft", "owner": run_owner(methods), "legacy": True}
    signatures = {"manifest.json": '"sparseft.sparse_diff"', "compression_config.json": '"producer": "sparseft"'}
    found = any(path.glob("sparseft_*.json")) or any(
        (path / name).is_file() and text in (path / name).read_text(errors="replace")
        for name, text in signatures.items())
    return {"producer": "sparseft", "owner": None, "legacy": True} if found else None


def nearest_marker(path: PathLike) -> dict | None:
    """The marker of `path` or of its nearest ancestor that has one."""
    p = Path(path).resolve()
    for folder in (p, *p.parents):
        marker = read_marker(folder)
        if marker is not None:
            return marker
    return None


def write_marker(path: PathLike, owner: str | None) -> None:
    from sparseft import __version__

    (Path(path) / MARKER).write_text(json.dumps({"producer": "sparseft", "owner": owner,
                                                 "sparseft_version": __version__}) + "\n")


def check_output_dir(path: PathLike, *, owner: str | None = None, overwrite: bool = False,
                     inputs: Sequence[PathLike | None] = (), replace: bool = False) -> Path:
    """Raise OutputDirError unless `path` may be written (module docstring); creates nothing.

    Args:
        owner: who writes it (a verb or a recipe's stage list); None accepts any sparseft folder.
        inputs: paths the command reads (models, diffs); names that are not existing paths
            (aliases, hub ids) are ignored.
        replace: the folder is replaced as a whole (its parent must then be writable too).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"output folder {p} is a file; give a folder path")
    target = p.resolve()
    for raw in inputs:
        if raw is None or str(raw) == "" or not Path(raw).exists():
            continue
        inp = Path(raw).resolve()
        if inp == target or target in inp.parents:
            what = "is" if inp == target else "contains"
            raise OutputDirError(f"output folder {p} {what} the input {raw}; writing there would delete it. "
                                 f"Choose another output folder (--overwrite does not change this)")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        marker = nearest_marker(p)
        if marker is None:
            raise OutputDirError(f"output folder {p} is not empty and was not written by sparseft; "
                                 f"choose another folder or pass --overwrite (overwrite=True) to replace "
                                 f"what it holds")
        if owner is not None and marker.get("owner") != owner:
            theirs = marker.get("owner") or ("an earlier sparseft version" if marker.get("legacy") else "a library call")
            raise OutputDirError(f"output folder {p} holds the output of another sparseft command "
                                 f"({theirs}, not {owner}); choose another folder or pass --overwrite "
                                 f"(overwrite=True) to replace it")
    _check_writable(target.parent if replace else target)
    return p


def prepare_output_dir(path: PathLike, *, owner: str | None, overwrite: bool = False,
                       inputs: Sequence[PathLike | None] = (), write: bool = True) -> Path:
    """Check `path` as a run folder (written into, never deleted), create it and mark it ours.

    `write=False` checks only (e.g. on non-main processes of a multi-process launch).
    """
    p = check_output_dir(path, owner=owner, overwrite=overwrite, inputs=inputs)
    if write:
        try:
            p.mkdir(parents=True, exist_ok=True)
            write_marker(p, owner)
        except OSError as exc:
            raise OutputDirError(f"cannot write output folder {p}: {exc.strerror or exc}") from None
    return p


@contextmanager
def replace_dir(path: PathLike, *, owner: str | None = None, overwrite: bool = False,
                inputs: Sequence[PathLike | None] = ()) -> Iterator[Path]:
    """`atomic_dir` after `check_output_dir`: yields a temporary folder that replaces `path`.

    The marker is written into the new folder; an OSError inside the block (full disk,
    permissions) becomes an OutputDirError naming `path`.
    """
    check_output_dir(path, owner=owner, overwrite=overwrite, inputs=inputs, replace=True)
    try:
        with atomic_dir(path) as tmp:
            yield tmp
            write_marker(tmp, owner)
    except OSError as exc:
        raise OutputDirError(f"cannot write {path}: {exc.strerror or exc}") from None


def _check_writable(path: Path) -> None:
    """Create and remove a temporary file in `path` (or its nearest existing ancestor)."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputDirError(f"cannot create {path}: {folder} is a file")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sparseft-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputDirError(f"cannot write to {folder}: {exc.strerror or exc}") from None

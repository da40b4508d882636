"""Atomic file and folder writing: write to a temporary sibling, then rename.

A killed process therefore leaves either the old file or folder or the new one, never a
half-written one under the final name. Details:

* Temporary siblings are named `.<name>.<8 hex>.tmp` and created with mode 0666 / 0777 minus
  the umask (`os.open(O_EXCL)` / `os.mkdir`), so results get the same permissions as any other
  file the process writes (mkstemp / mkdtemp would give 0600 / 0700). Files that writers inside
  an `atomic_dir` block created with narrower modes (transformers' `save_pretrained` writes its
  safetensors through mkstemp: 0600) are set to the umask's modes before the swap.
* A folder replaces an existing one with one atomic `renameat2(RENAME_EXCHANGE)` on Linux (the
  old content ends up under the temporary name and is then deleted). Where the kernel, libc or
  file system lacks it, the swap is two renames (old -> `.<name>.old`, new -> name);
  `clean_stale(path)` puts `.<name>.old` back if a crash came between the two.
* `clean_stale(path)` removes leftovers of killed writes (only names matching the patterns
  above, never other files): call it when a run starts.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import stat
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _temp_sibling(path, directory=False)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; it is renamed onto `path` if the block succeeds.

    For writers that want a file name (torch.save, safetensors.save_file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _temp_sibling(path, directory=False)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` (the old folder is removed).

    See the module docstring: an atomic exchange where the OS has one, else two renames.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, _ = _temp_sibling(path, directory=True)
    umask = 0o777 & ~stat.S_IMODE(tmp.stat().st_mode)  # mkdir(0777) applied it: no os.umask() race
    try:
        yield tmp
        _umask_modes_(tmp, umask)
        if path.is_dir() and not path.is_symlink() and _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        elif path.exists():
            trash = _trash_name(path)
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale(path: str | Path) -> list[Path]:
    """Remove what killed atomic writes of `path` left beside it; returns the removed paths.

    Only `.<name>.<8 chars>.tmp` siblings (this module's and mkstemp's old names) and
    `.<name>.old` are touched. If `path` is missing but `.<name>.old` exists (a crash between
    the two renames of the fallback swap), the old folder is renamed back instead of removed.
    Call it only when no other process is writing `path`.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp$")
    removed = []
    for entry in parent.iterdir():
        if pattern.match(entry.name):
            _remove(entry)
            removed.append(entry)
    trash = _trash_name(path)
    if trash.exists() or trash.is_symlink():
        if not path.exists() and trash.is_dir():
            os.replace(trash, path)
        else:
            _remove(trash)
            removed.append(trash)
    return removed


def clean_stale_in(folder: str | Path) -> list[Path]:
    """Remove every `.<name>.<8 chars>.tmp` entry of `folder` (temporaries of killed atomic
    writes); `.<name>.old` is left to `clean_stale(folder / name)` for names the caller owns."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
    removed = sorted(e for e in folder.iterdir() if pattern.match(e.name))
    for entry in removed:
        _remove(entry)
    return removed


def dir_size_bytes(path: str | Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- helpers ----------------------------------------------------------------------------------

def _temp_sibling(path: Path, *, directory: bool) -> tuple[Path, int | None]:
    """Create `.<name>.<8 hex>.tmp` next to `path`: a folder (mode 0777 & ~umask) or a file
    (0666 & ~umask, returned with its open descriptor)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            if directory:
                os.mkdir(tmp, 0o777)
                return tmp, None
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary name next to {path}")


def _umask_modes_(root: Path, umask: int) -> None:
    """Give every file under `root` mode 0666 & ~umask (0777 & ~umask if executable) and every
    folder 0777 & ~umask, as plain open() / mkdir() would."""
    for folder, dirs, files in os.walk(root):
        for name in files:
            f = os.path.join(folder, name)
            st = os.lstat(f)
            if stat.S_ISREG(st.st_mode):
                base = 0o777 if st.st_mode & 0o111 else 0o666
                if stat.S_IMODE(st.st_mode) != base & ~umask:
                    os.chmod(f, base & ~umask)
        for name in dirs:
            d = os.path.join(folder, name)
            if not os.path.islink(d):
                os.chmod(d, 0o777 & ~umask)


def _trash_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # libc without renameat2 (glibc < 2.28, musl < 1.2.?)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # file system or kernel without RENAME_EXCHANGE: use the two-rename swap
    raise OSError(err, os.strerror(err), str(b))

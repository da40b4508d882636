"""Local folders for Hugging Face Hub repo ids: `resolve_folder("user/repo")` -> a snapshot folder.

    folder = resolve_folder("me/minilm-conll-sft")                 # downloaded (or cached) snapshot
    folder = resolve_folder("runs/sft/diff")                       # an existing local path: as is

A name that exists locally is returned unchanged; a name shaped like a repo id ("owner/name",
one slash, no leading "." or "/") is fetched with `huggingface_hub.snapshot_download` at
`revision`, with `local_files_only=True` when HF_HUB_OFFLINE is set (read at call time), so
offline runs use the local HF cache and fail with one clear line when the repo is not there.
Anything else is returned unchanged, for the caller's own "not found" message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in ("1", "ON", "YES", "TRUE")


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name


def resolve_folder(name: str | Path, *, revision: str | None = None) -> Path:
    """A local folder for `name`: the path itself, or the Hub snapshot of a repo id.

    Args:
        name: a local path or a Hub repo id ("owner/name").
        revision: branch, tag or commit of the repo (default: main).
    """
    path = Path(name)
    if path.exists() or not looks_like_repo_id(str(name)):
        return path
    from huggingface_hub import snapshot_download

    offline = is_offline()
    try:
        return Path(snapshot_download(str(name), revision=revision, local_files_only=offline))
    except Exception as exc:  # huggingface_hub raises several types (not found, offline, auth)
        where = "in the local Hugging Face cache (HF_HUB_OFFLINE=1)" if offline else "on the Hugging Face Hub"
        raise FileNotFoundError(f"{name}: no such local folder, and no repo {name!r}"
                                f"{f' at revision {revision!r}' if revision else ''} {where} "
                                f"({type(exc).__name__})") from None

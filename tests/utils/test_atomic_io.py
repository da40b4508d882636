"""Atomic writes (sparseft.utils.io): umask-respecting modes, atomic folder swap (exchange and the
two-rename fallback), and the clean-up of what killed writes leave behind (only our own names)."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest

import sparseft.utils.io as io
from sparseft.utils.io import atomic_dir, atomic_file, atomic_write_json, atomic_write_text, clean_stale, clean_stale_in


@pytest.fixture
def umask():
    """Set a umask for the test and restore the old one afterwards."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                      (0o002, 0o664, 0o775)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"a": 1})
    with atomic_file(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"1")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inner.txt").write_text("1")
    with atomic_dir(tmp_path / "d") as tmp:  # replacing an existing folder (exchange path)
        (tmp / "inner.txt").write_text("2")
        fd, narrow = tempfile.mkstemp(dir=tmp)  # as transformers' save_pretrained writes shards
        os.close(fd)
        os.replace(narrow, tmp / "shard.safetensors")
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "x").write_text("1")
    for name in ("a.txt", "b.json", "c.bin"):
        assert _mode(tmp_path / name) == file_mode, name
    assert _mode(tmp_path / "d") == dir_mode
    for name in ("inner.txt", "shard.safetensors", "sub/x"):
        assert _mode(tmp_path / "d" / name) == file_mode, name
    assert _mode(tmp_path / "d" / "sub") == dir_mode
    plain = tmp_path / "plain.txt"  # what any other write gives: the reference
    plain.write_text("x")
    assert _mode(plain) == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.bin", "d", "plain.txt"]


@pytest.mark.parametrize("exchange", [True, False])
def test_atomic_dir_replaces_or_keeps_the_old_folder(tmp_path, monkeypatch, exchange):
    if not exchange:  # file systems / kernels without RENAME_EXCHANGE: the two-rename swap
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    target = tmp_path / "art"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(target) as tmp:
            (tmp / "v").write_text("3")
            raise RuntimeError("boom")
    assert (target / "v").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temp or trash left


def test_exchange_swaps_two_folders_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "y").write_text("b")
    if not io._exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here: atomic_dir uses the two-rename swap")
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]


def test_clean_stale_removes_only_our_leftovers(tmp_path):
    ckpt = tmp_path / "last"
    ckpt.mkdir()
    (ckpt / "state.json").write_text("{}")
    ours = [tmp_path / ".last.1a2b3c4d.tmp", tmp_path / ".last.k_9xq0ab.tmp"]  # ours; mkstemp's old names
    for p in ours:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"0" * 10)
    (tmp_path / ".last.old").mkdir()
    (tmp_path / ".log.jsonl.abcdef12.tmp").write_text("partial")
    foreign = [tmp_path / ".last.backup.tmp", tmp_path / "last.tmp", tmp_path / ".last.1A2B3C4D.tmp",
               tmp_path / "notes.old", tmp_path / ".lastx.1a2b3c4d.tmp"]
    for p in foreign:
        p.write_text("keep me")
    removed = clean_stale(ckpt)
    assert sorted(p.name for p in removed) == sorted([*(p.name for p in ours), ".last.old"])
    assert all(p.exists() for p in foreign) and (ckpt / "state.json").exists()
    # every entry's temporaries: `.lastx.*.tmp` is one of `lastx` (foreign to `last` only); a
    # `.<name>.old` is only handled for a named path (it could be a user's own backup)
    (tmp_path / ".config.old").mkdir()
    assert [p.name for p in clean_stale_in(tmp_path)] == [".lastx.1a2b3c4d.tmp", ".log.jsonl.abcdef12.tmp"]
    assert all(p.exists() for p in foreign[:-1]) and (ckpt / "state.json").exists()
    assert (tmp_path / ".config.old").is_dir() and not (tmp_path / "config").exists()


def test_clean_stale_puts_back_a_folder_caught_between_the_two_renames(tmp_path):
    """Fallback swap killed after `last -> .last.old` and before `new -> last`."""
    (tmp_path / ".last.old").mkdir()
    (tmp_path / ".last.old" / "state.json").write_text('{"step": 3}')
    (tmp_path / ".last.0badf00d.tmp").mkdir()  # the new, possibly incomplete, copy
    clean_stale(tmp_path / "last")
    assert (tmp_path / "last" / "state.json").read_text() == '{"step": 3}'
    assert [p.name for p in tmp_path.iterdir()] == ["last"]

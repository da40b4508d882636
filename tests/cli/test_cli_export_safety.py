"""`sparseft export` (and saves in general) never lose data: the parent of the input is never
replaced, a foreign folder needs --overwrite, a file / unwritable / full output folder is one
error line naming it, and a failed save keeps the previous folder. Fixtures: tests/cli/conftest.py."""

from __future__ import annotations

import errno
import os

import pytest

from sparseft.cli.main import main


def test_export_into_the_parent_of_its_input_is_refused_even_with_overwrite(run_dir, fails):
    for extra in ([], ["--overwrite"]):
        fails(["export", str(run_dir / "model"), "--output", str(run_dir), "--no-verify", *extra],
              f"output folder {run_dir} contains the input")
    assert (run_dir / "model" / "config.json").exists() and (run_dir / "report.md").exists()


def test_export_refuses_a_foreign_folder_and_replaces_only_with_overwrite(run_dir, tmp_path, fails):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    fails(["export", str(run_dir / "model"), "--output", str(out), "--no-verify"],
          "not written by sparseft", "--overwrite")
    assert (out / "notes.txt").read_text() == "precious"
    assert main(["export", str(run_dir / "model"), "--output", str(out), "--no-verify", "--overwrite",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert (out / "compression_config.json").exists() and not (out / "notes.txt").exists()
    # its own earlier export is replaced without --overwrite
    assert main(["export", str(run_dir / "model"), "--output", str(out), "--no-verify",
                 "--json", str(tmp_path / "s.json")]) == 0


def test_output_that_is_a_file_or_unwritable_is_one_line(run_dir, diff_dir, tmp_path, fails, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    fails(["export", str(run_dir / "model"), "--output", str(f), "--no-verify"], f"{f} is a file")
    fails(["diff", "apply", str(diff_dir), "--model", str(run_dir / "model"), "--output", str(f / "sub")],
          "is a file")
    if os.geteuid() != 0:  # root may write into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            fails(["export", str(run_dir / "model"), "--output", str(ro / "x"), "--no-verify"],
                   f"cannot write to {ro}")
        finally:
            ro.chmod(0o700)


def test_full_disk_during_save_is_one_line_and_keeps_the_old_folder(run_dir, diff_dir, tmp_path, fails,
                                                                    monkeypatch):
    import safetensors.torch
    import transformers.modeling_utils

    out = tmp_path / "applied"
    assert main(["diff", "apply", str(diff_dir), "--model", str(run_dir / "model"), "--output", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)  # save_pretrained's writer
    fails(["export", str(run_dir / "model"), "--output", str(tmp_path / "c"), "--no-verify"],
          f"cannot write {tmp_path / 'c'}: No space left on device")
    assert not (tmp_path / "c").exists()
    fails(["diff", "apply", str(diff_dir), "--model", str(run_dir / "model"), "--output", str(out)],
          f"cannot write {out}: No space left on device")
    assert sorted(p.name for p in out.iterdir()) == before


def test_truncated_compressed_folder_is_one_error_naming_the_file(run_dir, tmp_path):
    from sparseft.export.compressed import load_compressed

    out = tmp_path / "c"
    assert main(["export", str(run_dir / "model"), "--output", str(out), "--no-verify",
                 "--json", str(tmp_path / "s.json")]) == 0
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"{weights}: cannot read the tensors, the file is truncated or corrupt"):
        load_compressed(out)

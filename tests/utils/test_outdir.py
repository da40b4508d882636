"""Output-folder safety (utils/outdir.py): foreign folders need overwrite, inputs are never
replaced, a folder sparseft made for the same owner is reused, OS errors name the folder."""

from __future__ import annotations

import errno
import os

import pytest

from sparseft.utils import outdir
from sparseft.utils.outdir import (MARKER, OutputDirError, check_output_dir, nearest_marker, prepare_output_dir,
                                   replace_dir)


def test_new_and_empty_folders_are_fine_and_get_a_marker(tmp_path):
    out = prepare_output_dir(tmp_path / "a" / "run", owner="run:train")
    assert (out / MARKER).exists() and nearest_marker(out)["owner"] == "run:train"
    (tmp_path / "empty").mkdir()
    prepare_output_dir(tmp_path / "empty", owner="x")


def test_foreign_non_empty_folder_needs_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty and was not written by sparseft.*--overwrite"):
        prepare_output_dir(tmp_path, owner="run:train")
    prepare_output_dir(tmp_path, owner="run:train", overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # a run folder is written into, not wiped
    prepare_output_dir(tmp_path, owner="run:train")          # now ours: a rerun / resume is fine


def test_another_commands_folder_is_refused_but_library_calls_accept_any_sparseft_folder(tmp_path):
    run = prepare_output_dir(tmp_path / "run", owner="run:train+eval+save")
    (run / "report.md").write_text("x")
    with pytest.raises(OutputDirError, match=r"another sparseft command \(run:train\+eval\+save, not run:prune"):
        prepare_output_dir(run, owner="run:prune+save")
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    # the nearest marker (the run folder's) covers its sub-folders
    with pytest.raises(OutputDirError, match="another sparseft command"):
        check_output_dir(run / "model", owner="diff apply", replace=True)
    check_output_dir(run / "model", owner=None, replace=True)
    check_output_dir(run / "model", owner="run:train+eval+save", replace=True)


def test_a_folder_that_is_or_holds_an_input_is_refused_even_with_overwrite(tmp_path):
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    for target in (tmp_path / "run", model):
        with pytest.raises(OutputDirError, match="the input"):
            check_output_dir(target, overwrite=True, inputs=["minilm", str(model)], replace=True)
    check_output_dir(model / "compressed", inputs=[str(model)])  # inside the input: nothing is deleted


def test_a_file_is_not_a_folder(tmp_path):
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(OutputDirError, match=f"{f} is a file"):
        prepare_output_dir(f, owner="x", overwrite=True)
    with pytest.raises(OutputDirError, match="is a file"):
        prepare_output_dir(f / "sub", owner="x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_is_reported_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputDirError, match=f"cannot write to {ro}"):
            prepare_output_dir(ro / "run", owner="x")
    finally:
        ro.chmod(0o700)


def test_unwritable_folder_is_one_error_naming_it(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outdir.tempfile, "mkstemp", denied)
    with pytest.raises(OutputDirError, match=f"cannot write to {tmp_path}: Permission denied"):
        prepare_output_dir(tmp_path / "run", owner="x")


def test_replace_dir_keeps_the_old_folder_on_a_full_disk(tmp_path):
    target = tmp_path / "art"
    with replace_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(OutputDirError, match=f"cannot write {target}: No space left on device"):
        with replace_dir(target) as tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temporary folder left behind


def test_folders_from_before_the_marker_are_recognised(tmp_path):
    import yaml

    run = tmp_path / "old_run"  # what a pre-marker `sparseft train` left
    (run / "model").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "recipe.yaml").write_text(yaml.safe_dump({"stages": [{"method": "train"}, {"method": "save"}]}))
    (run / "model" / "sparseft_data.json").write_text("{}")
    prepare_output_dir(run, owner="run:train+save")                 # resume of the same recipe
    (run / MARKER).unlink()
    with pytest.raises(OutputDirError, match=r"\(run:train\+save, not run:prune\)"):
        prepare_output_dir(run, owner="run:prune")
    check_output_dir(run / "model", replace=True)                   # library save of an old artifact
    with pytest.raises(OutputDirError, match="an earlier sparseft version, not export"):
        check_output_dir(run / "model", owner="export", replace=True)

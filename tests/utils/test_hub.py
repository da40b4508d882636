"""Hub ids for diffs: `resolve_folder` / `load_diff("owner/name")` through huggingface_hub's real
snapshot_download, offline, against a fake local HF cache (models--owner--name/snapshots/<sha>)."""

from __future__ import annotations

import shutil

import pytest
import torch

from sparseft.export.sparse_diff import SparseDiff, load_diff, save_diff
from sparseft.utils.hub import looks_like_repo_id, resolve_folder

SHA = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(cache, repo_id, folder, revision="main"):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / SHA
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(SHA)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def small_diff():
    return SparseDiff({"w.weight": torch.tensor([1, 4])}, {"w.weight": torch.tensor([0.5, -1.0])},
                      {"w.weight": (2, 3)}, manifest={"base_model": "me/base", "base_revision": "abc"})


def test_load_diff_accepts_a_hub_id_offline(tmp_path, offline_cache):
    save_diff(small_diff(), tmp_path / "d")
    snap = fake_cache(offline_cache, "me/tiny-diff", tmp_path / "d")
    assert resolve_folder("me/tiny-diff") == snap
    diff = load_diff("me/tiny-diff")
    assert torch.equal(diff.indices["w.weight"], torch.tensor([1, 4]))
    assert diff.manifest["base_revision"] == "abc"
    assert load_diff("me/tiny-diff", revision="main").count == 2


def test_missing_repo_offline_is_one_clear_error(offline_cache):
    with pytest.raises(FileNotFoundError, match="no repo 'me/absent'.*local Hugging Face cache"):
        load_diff("me/absent")


def test_local_paths_are_never_sent_to_the_hub(tmp_path):
    assert resolve_folder(tmp_path) == tmp_path
    assert not looks_like_repo_id("runs/sft/diff") and not looks_like_repo_id("./a/b")
    assert looks_like_repo_id("me/diff-1.0")
    with pytest.raises(FileNotFoundError, match="not a sparse diff folder"):
        load_diff(tmp_path / "runs" / "sft" / "diff")


def test_saved_diff_has_a_model_card(tmp_path):
    save_diff(small_diff(), tmp_path / "d")
    card = (tmp_path / "d" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sparseft\nbase_model: me/base")
    assert "sparse-diff" in card and "sparseft.load(" in card and "abc" in card


def test_cli_diff_info_takes_a_hub_id(tmp_path, offline_cache, capsys):
    from sparseft.cli.main import main

    save_diff(small_diff(), tmp_path / "d")
    fake_cache(offline_cache, "me/tiny-diff", tmp_path / "d")
    assert main(["diff", "info", "me/tiny-diff"]) == 0
    out = capsys.readouterr().out
    assert "me/base" in out and "abc" in out

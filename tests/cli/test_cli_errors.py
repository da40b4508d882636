"""User mistakes are one line naming the field or file, exit 2 (no traceback): config values of
the wrong type, --max-length beyond the model's positions, corrupt or mismatched diffs.
Fixtures: tests/cli/conftest.py."""

from __future__ import annotations

import pytest
import yaml

from sparseft.cli.main import main


@pytest.fixture
def recipe(tiny_bert_dir, data, tmp_path):
    train, dev = data
    raw = {"model": str(tiny_bert_dir), "data": {"task": "ner", "train": str(train), "eval": str(dev)},
           "output_dir": str(tmp_path / "r"),
           "stages": [{"name": "ft", "method": "train", "epochs": 1, "batch_size": 8, "progress": False,
                       "mixed_precision": "no"}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("override, message", [
    ("stages.ft.epochs=abc", "stage 'ft' (train): TrainConfig.epochs: expected an integer, got 'abc' (str)"),
    ("stages.ft.epochs=true", "TrainConfig.epochs: expected an integer, got True (bool)"),
    ("stages.ft.batch_size=1.5", "TrainConfig.batch_size: expected an integer, got 1.5 (float)"),
    ("stages.ft.progress=1", "TrainConfig.progress: expected true or false, got 1 (int)"),
    ("stages.ft.mixed_precision=no", "TrainConfig.mixed_precision: expected a string, got False (bool) (quote it"),
    ("data.max_length=abc", "DataConfig.max_length: expected an integer, got 'abc' (str)"),
    ("seed=abc", "recipe seed: expected an integer, got 'abc' (str)"),
])
def test_wrong_config_types_name_the_field(recipe, fails, override, message):
    fails(["run", str(recipe), override], message)


def test_clean_number_strings_still_work(recipe, tmp_path):
    raw = yaml.safe_load(recipe.read_text())
    raw["stages"][0].update(epochs="1", lr=1)  # quoted int in YAML, int for a float field
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["run", str(recipe)]) == 0


def test_max_length_beyond_the_models_positions(tiny_bert_dir, data, tmp_path, fails):
    train, dev = data
    fails(["train", "--model", str(tiny_bert_dir), "--train", str(train), "--eval", str(dev), "--max-length", "512",
           "--output-dir", str(tmp_path / "r"), "--no-cost"],
          "data.max_length=512 is more than the model's 128 positions")


def test_revert_on_a_model_the_diff_was_not_applied_to(run_dir, diff_dir, tmp_path, fails):
    fails(["diff", "revert", str(diff_dir), "--model", str(run_dir / "model"), "--output", str(tmp_path / "r")],
          "does not hold base + this diff's delta", "--force")
    assert main(["diff", "apply", str(diff_dir), "--model", str(run_dir / "model"), "--output", str(tmp_path / "a")]) == 0
    assert main(["diff", "revert", str(diff_dir), "--model", str(tmp_path / "a"), "--output", str(tmp_path / "r")]) == 0


def test_truncated_diff_is_one_line_naming_the_file(run_dir, diff_dir, tmp_path, fails):
    st = diff_dir / "diff.safetensors"
    st.write_bytes(st.read_bytes()[:64])
    fails(["diff", "apply", str(diff_dir), "--model", str(run_dir / "model"), "--output", str(tmp_path / "a")],
          f"{st}: cannot read the tensors, the file is truncated or corrupt")


def test_full_disk_while_saving_the_trained_model_is_one_line(tiny_bert_dir, data, tmp_path, fails, monkeypatch):
    import errno
    import os

    import transformers.modeling_utils

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)  # save_pretrained's writer
    train, dev = data
    out = tmp_path / "r"
    fails(["train", "--model", str(tiny_bert_dir), "--train", str(train), "--eval", str(dev), "--epochs", "1",
           "--batch-size", "8", "--output-dir", str(out), "--no-cost", "--set", "progress=false"],
          f"cannot write {out / 'model'}: No space left on device")
    assert not (out / "model").exists()

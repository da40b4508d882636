"""Fixtures for the CLI safety tests: a finished `sparseft train` run on the tiny BERT and a
small sparse diff against its model."""

from __future__ import annotations

import pytest
import torch

from sft_toys import write_ner_files
from sparseft.cli.main import main
from sparseft.export.sparse_diff import SparseDiff, fingerprint, save_diff

TRAIN_ARGS = ["--task", "ner", "--epochs", "1", "--batch-size", "8", "--no-cost", "--mixed-precision", "no",
              "--set", "progress=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_ner_files(tmp_path_factory.mktemp("data"), repeat=2)


@pytest.fixture(scope="module")
def run_dir(tiny_bert_dir, data, tmp_path_factory):
    """A finished `sparseft train` run folder (holds model/)."""
    out = tmp_path_factory.mktemp("runs") / "conll"
    train, dev = data
    assert main(["train", "--model", str(tiny_bert_dir), "--train", str(train), "--eval", str(dev),
                 "--output-dir", str(out), *TRAIN_ARGS]) == 0
    return out


@pytest.fixture
def diff_dir(run_dir, tmp_path):
    from sparseft.load.model import load_model

    model = load_model(str(run_dir / "model"), "ner")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    w = dict(model.named_parameters())[name]
    idx = torch.tensor([0, 5, 9])
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    manifest = {"base_model": str(run_dir / "model"), "base_fingerprint": fingerprint(model, [name]),
                "fingerprint_tensors": [name], "task": "ner", "labels": labels}
    diff = SparseDiff({name: idx}, {name: torch.full((3,), 0.25)}, {name: tuple(w.shape)},
                      {name: w.detach().reshape(-1)[idx].clone()}, {}, manifest)
    return save_diff(diff, tmp_path / "diff")


@pytest.fixture
def fails(capsys):
    """fails(argv, *needles): the CLI must exit 2 with one error line holding every needle."""
    def check(argv, *needles) -> str:
        capsys.readouterr()  # drop what earlier calls printed
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "Traceback" not in err and len([x for x in err.splitlines() if "error:" in x]) == 1, err
        for n in needles:
            assert n in err, err
        return err

    return check

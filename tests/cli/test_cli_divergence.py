"""A training run whose loss becomes NaN / inf prints one line (the loop's advice) and exits 1,
not a traceback. Fixtures: tests/cli/conftest.py."""

from __future__ import annotations

from sparseft.cli.main import main


def test_divergence_is_one_line_exit_1(tiny_bert_dir, data, tmp_path, capsys):
    train, dev = data
    capsys.readouterr()
    rc = main(["train", "--model", str(tiny_bert_dir), "--train", str(train), "--eval", str(dev), "--lr", "1e30",
               "--warmup-ratio", "0", "--epochs", "2", "--batch-size", "4", "--mixed-precision", "no",
               "--output-dir", str(tmp_path / "r"), "--no-cost", "--set", "progress=false", "--set", "max_grad_norm=0"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    assert [x for x in err.splitlines() if "diverged" in x][0].startswith("sparseft train: training diverged: loss is")

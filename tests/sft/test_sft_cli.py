"""End to end on the tiny BERT through the CLI: `sparseft train --method sft ...` writes the
diff and the merged model; `sparseft diff info|apply|revert|compose|merge` work on it; a diff
is refused on another base unless --force."""

from __future__ import annotations

import json

import pytest
import torch

from sft_toys import logits, ner_data, write_ner_files
from sparseft.cli.main import main
from sparseft.load.model import load_model


@pytest.fixture(scope="module")
def run_dir(tiny_bert_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    train, dev = write_ner_files(data_dir)
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--model", str(tiny_bert_dir), "--train", str(train), "--eval", str(dev),
               "--output-dir", str(out), "--method", "sft", "--mask", "fisher", "--density", "0.05",
               "--epochs", "2", "--batch-size", "8", "--lr", "5e-3", "--mixed-precision", "no", "--no-cost",
               "--set", "progress=false", "--set", "mask_options={n_batches: 2}"])
    assert rc == 0
    return out, train, dev


def test_train_writes_diff_model_and_report(run_dir):
    out, _, _ = run_dir
    assert (out / "diff" / "diff.safetensors").exists() and (out / "diff" / "manifest.json").exists()
    assert (out / "model" / "config.json").exists()
    metrics = json.loads((out / "metrics.json").read_text())["stages"]["finetune"]
    assert metrics["mask"] == "fisher" and 0.049 < metrics["density"] < 0.051
    assert metrics["trainable_params"] == metrics["selected"] + metrics["dense_head_params"]
    manifest = json.loads((out / "diff" / "manifest.json").read_text())
    assert manifest["task"] == "ner" and manifest["labels"][0] == "O"


def test_diff_info(run_dir, capsys):
    out, _, _ = run_dir
    assert main(["diff", "info", str(out / "diff"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "FisherMaskConfig" and info["count"] > 0


def test_apply_reproduces_the_trained_model_and_revert_restores(run_dir, tiny_bert_dir, tiny_tokenizer, tmp_path):
    out, train, dev = run_dir
    assert main(["diff", "apply", str(out / "diff"), "--model", str(tiny_bert_dir), "-o", str(tmp_path / "a")]) == 0
    data = ner_data(tiny_tokenizer, train, dev)
    trained = load_model(str(out / "model"), "ner")
    applied = load_model(str(tmp_path / "a"), "ner")
    assert torch.equal(logits(applied, data, tiny_tokenizer), logits(trained, data, tiny_tokenizer))
    assert main(["diff", "revert", str(out / "diff"), "--model", str(tmp_path / "a"), "-o", str(tmp_path / "r")]) == 0
    base = load_model(str(tiny_bert_dir), "ner", labels=data.labels).state_dict()
    reverted = load_model(str(tmp_path / "r"), "ner").state_dict()
    manifest = json.loads((out / "diff" / "manifest.json").read_text())
    assert all(torch.equal(reverted[n], base[n]) for n in manifest["fingerprint_tensors"])


def test_compose_and_merge(run_dir, tiny_bert_dir, tmp_path):
    out, _, _ = run_dir
    assert main(["diff", "compose", str(out / "diff"), "--output", str(tmp_path / "c"), "--drop-heads"]) == 0
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["dense"] == {}
    assert main(["diff", "merge", str(out / "diff"), "--base", str(tiny_bert_dir), "-o", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "sparseft_diff.json").exists()


def test_other_base_is_refused_unless_forced(run_dir, tmp_path, capsys):
    from transformers import BertConfig, BertModel

    out, _, _ = run_dir
    cfg = BertConfig.from_pretrained(out / "model")
    torch.manual_seed(99)
    BertModel(cfg).save_pretrained(tmp_path / "other")
    for f in (out / "model").glob("tok*"):
        (tmp_path / "other" / f.name).write_bytes(f.read_bytes())
    rc = main(["diff", "apply", str(out / "diff"), "--model", str(tmp_path / "other"), "-o", str(tmp_path / "x")])
    assert rc == 2 and "force" in capsys.readouterr().err
    assert main(["diff", "apply", str(out / "diff"), "--model", str(tmp_path / "other"), "-o", str(tmp_path / "x"),
                 "--force"]) == 0


def test_help_and_flag_errors(capsys):
    for verb in ("info", "apply", "revert", "compose", "merge"):
        with pytest.raises(SystemExit) as exc:
            main(["diff", verb, "--help"])
        assert exc.value.code == 0
    assert "--match-lora-rank" in _help(["train", "--help"])
    assert main(["train", "--train", "x.conll", "--density", "0.1"]) == 2
    assert "need --method sft" in capsys.readouterr().err


def _help(argv) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(argv)
    return buf.getvalue()

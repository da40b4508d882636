"""The CLI on a tiny BERT: train -> eval -> run a recipe; errors are one line, exit code 2."""

import json

import pytest
import yaml

from sparseft.cli.main import build_parser, main


def test_every_verb_has_help(capsys):
    for verb in ("train", "eval", "run", "demo"):
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        assert "usage: sparseft" in capsys.readouterr().out
    assert {"train", "eval", "run", "demo"} <= set(build_parser()._subparsers._group_actions[0].choices)


def test_train_then_eval_then_transformers_reload(tiny_bert_dir, toy_ner_files, tmp_path, capsys):
    train_path, dev_path = toy_ner_files
    out = tmp_path / "run"
    rc = main(["train", "--model", str(tiny_bert_dir), "--task", "ner", "--train", str(train_path),
               "--eval", str(dev_path), "--epochs", "2", "--batch-size", "4", "--lr", "5e-3",
               "--output-dir", str(out), "--no-cost", "--set", "progress=false"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "[dev]" in text and "per_type.PER.f1" in text
    model_dir = out / "model"
    assert (model_dir / "config.json").exists() and (model_dir / "sparseft_data.json").exists()
    assert (model_dir / "sparseft_recipe.yaml").exists() and (out / "report.md").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"]["finetune"]["steps"] == 12

    from transformers import AutoModelForTokenClassification

    plain = AutoModelForTokenClassification.from_pretrained(model_dir)
    assert plain.config.id2label[0] == "O"

    rc = main(["eval", str(model_dir), "--data", str(dev_path), "--json", str(tmp_path / "m.json")])
    assert rc == 0
    again = json.loads((tmp_path / "m.json").read_text())["stages"]["eval"]
    assert again["f1"] == pytest.approx(metrics["stages"]["dev"]["f1"])


def test_run_recipe_with_overrides(tiny_bert_dir, toy_cls_file, tmp_path):
    recipe = {"model": str(tiny_bert_dir), "data": {"task": "cls", "train": str(toy_cls_file)},
              "output_dir": str(tmp_path / "r"),
              "stages": [{"name": "ft", "method": "train", "epochs": 3, "batch_size": 8, "progress": False},
                         {"name": "dev", "method": "eval", "cost": False}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "stages.ft.epochs=1", "stages.ft.lr=1e-3"]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())["stages"]
    assert metrics["ft"]["steps"] == 5 and "accuracy" in metrics["dev"]
    saved = yaml.safe_load((tmp_path / "r" / "recipe.yaml").read_text())
    assert saved["stages"][0]["lr"] == 1e-3


def test_user_errors_are_one_line_exit_2(tmp_path, capsys, toy_ner_files):
    bad = tmp_path / "bad.conll"
    bad.write_text("john NNP B-PER\nsmith I-PER\n")  # 2nd line lacks a column
    rc = main(["train", "--model", "minilm", "--train", str(bad), "--no-cost"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.conll:2" in err and "Traceback" not in err
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "x", "data": {"task": "ner", "train": "t"},
                                      "stages": [{"method": "nosuch"}]}))
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "unknown stage method 'nosuch'; valid choices:" in err and "eval" in err and "train" in err


def test_list_stages_needs_no_recipe(capsys):
    assert main(["run", "--list-stages"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "TrainConfig" in out and "eval" in out
    assert main(["run"]) == 2
    assert "give a recipe" in capsys.readouterr().err

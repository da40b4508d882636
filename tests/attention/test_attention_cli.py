"""`--attention SPEC` on train / eval / chat-sft: parsing, the recipe stage it adds, and a tiny
train -> save -> eval run where the saved folder brings its sparse attention back."""

from __future__ import annotations

import json

import pytest

from sparseft.cli.attention_args import attention_stages, parse_attention
from sparseft.cli.main import build_parser, main


def _sub(name):
    parser = build_parser()
    action = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return action.choices[name]


def test_parse_attention_spec():
    assert parse_attention("window=sqrt,sinks=4") == {"window": "sqrt", "sinks": 4}
    assert parse_attention("128,global_positions=[0,7]") == {"window": 128, "global_positions": [0, 7]}
    assert parse_attention("") is None and parse_attention("dense") is None
    with pytest.raises(ValueError, match="unknown field 'foo'"):
        parse_attention("foo=1")
    with pytest.raises(ValueError, match="SparseAttentionConfig.window"):
        parse_attention("window=log")


def test_train_and_chat_sft_recipes_get_the_stage():
    from sparseft.cli.chat_cmd import build_recipe_dict as chat_recipe

    args = _sub("train").parse_args(["--train", "t.txt", "--attention", "window=sqrt,sinks=2"])
    assert attention_stages(args) == [{"name": "attention", "method": "sparse_attention", "window": "sqrt",
                                       "sinks": 2}]
    assert attention_stages(_sub("train").parse_args(["--train", "t.txt"])) == []
    chat = chat_recipe(_sub("chat-sft").parse_args(["--train", "t.jsonl", "--attention", "64"]))["stages"]
    methods = [s["method"] for s in chat]
    assert methods.index("sparse_attention") < methods.index("chat_sft")


def test_train_saves_the_pattern_and_eval_restores_it(tiny_bert_dir, toy_ner_files, tmp_path, capsys):
    train_path, dev_path = toy_ner_files
    out = tmp_path / "run"
    rc = main(["train", "--model", str(tiny_bert_dir), "--task", "ner", "--train", str(train_path),
               "--eval", str(dev_path), "--epochs", "1", "--batch-size", "8", "--output-dir", str(out), "--no-cost",
               "--set", "progress=false", "--attention", "window=3,global_tokens=1"])
    assert rc == 0
    saved = json.loads((out / "model" / "config.json").read_text())["sparseft_attention"]["_data"]
    assert saved["window"] == 3 and saved["global_tokens"] == 1
    f1 = json.loads((out / "metrics.json").read_text())["stages"]["dev"]["f1"]
    capsys.readouterr()
    assert main(["eval", str(out / "model"), "--data", str(dev_path), "--json", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["stages"]["eval"]["f1"] == pytest.approx(f1)
    assert main(["eval", str(out / "model"), "--data", str(dev_path), "--attention", "dense",
                 "--json", str(tmp_path / "b.json")]) == 0

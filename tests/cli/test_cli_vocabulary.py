"""One CLI vocabulary (issue 14 item 6): the same flags mean the same thing in every verb, the
generated flags match their config dataclasses, help states each default once, the sparse
fine-tuning defaults (mask, learning rate) come from one place."""

from __future__ import annotations

import argparse
import re

import pytest

from sparseft.cli.flags import field_default, field_docs
from sparseft.cli.main import build_parser


def _verbs(parser: argparse.ArgumentParser, prefix: str = ""):
    """(name, parser) for every verb and sub-verb (diff apply, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _verbs(sub, f"{prefix}{name} ")


VERBS = dict(_verbs(build_parser()))


def _option(parser, flag: str):
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_every_verb_and_sub_verb_is_found():
    assert {"train", "eval", "chat-sft", "chat", "prune", "quantize", "factorize", "export", "diff apply",
            "diff compose", "diff merge", "demo", "compare", "plan", "run"} <= set(VERBS)


@pytest.mark.parametrize("name", sorted(VERBS))
def test_help_states_each_default_once(name):
    parser = VERBS[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        text = formatter._expand_help(action)  # the help line as --help prints it, defaults appended
        flag = action.option_strings[0] if action.option_strings else action.dest
        assert "(default: None)" not in text, f"{name} {flag}: {text}"
        assert len(re.findall(r"\(default\b|[;,] default\b", text)) <= 1, f"{name} {flag}: {text}"
    parser.format_help()  # renders


@pytest.mark.parametrize("name", ["train", "prune", "quantize", "factorize", "chat-sft", "demo", "compare", "run",
                                  "diff apply", "diff revert", "diff compose", "diff merge", "export"])
def test_o_is_output_dir_everywhere(name):
    out = _option(VERBS[name], "-o")
    assert out is not None and "--output-dir" in out.option_strings and "--output_dir" in out.option_strings
    assert out.dest == "output_dir"


@pytest.mark.parametrize("name", ["train", "prune", "quantize", "factorize"])
def test_set_is_the_config_field_flag_and_option_its_alias(name):
    action = _option(VERBS[name], "--set")
    assert action is not None and "--option" in action.option_strings and "-o" not in action.option_strings
    args = VERBS[name].parse_args(["--model", "m", "--set", "a=1", "--option", "b=2", "-o", "out"])
    assert args.set == ["a=1", "b=2"] and args.output_dir == "out"


@pytest.mark.parametrize("name,flags", [
    ("train", ["--model_name_or_path", "--output_dir", "--learning_rate", "--num_train_epochs",
               "--per_device_train_batch_size", "--max_length"]),
    ("chat-sft", ["--model_name_or_path", "--output_dir", "--learning_rate", "--num_train_epochs",
                  "--per_device_train_batch_size", "--max_length"]),
    ("prune", ["--model_name_or_path", "--output_dir", "--learning_rate", "--num_train_epochs",
               "--per_device_train_batch_size", "--max_length"]),
    ("factorize", ["--model_name_or_path", "--output_dir", "--learning_rate", "--num_train_epochs",
                   "--per_device_train_batch_size", "--max_length"]),
    ("quantize", ["--model_name_or_path", "--output_dir", "--max_length"]),
    ("eval", ["--model_name_or_path", "--max_length"]),
    ("export", ["--model_name_or_path", "--output_dir"]),
    ("diff merge", ["--model_name_or_path", "--output_dir"]),
    ("plan", ["--model_name_or_path", "--max_length", "--per_device_train_batch_size"]),
    ("run", ["--output_dir"]),
])
def test_hf_trl_names_are_aliases(name, flags):
    for flag in flags:
        assert _option(VERBS[name], flag) is not None, f"{name} lacks {flag}"


def test_hf_names_parse_to_our_fields():
    args = VERBS["train"].parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--learning_rate", "1e-3",
                                      "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
                                      "--max_length", "64", "--gradient_checkpointing"])
    assert (args.model, args.output_dir, args.lr, args.epochs, args.batch_size, args.max_length) == \
        ("m", "o", 1e-3, 2, 4, 64)
    assert args.gradient_checkpointing is True
    # MODEL positional or --model, not two different ones
    from sparseft.cli.common import resolve_model_arg

    assert resolve_model_arg(VERBS["eval"].parse_args(["--model", "m", "--data", "d"])) == "m"
    with pytest.raises(ValueError, match="MODEL given twice"):
        resolve_model_arg(VERBS["eval"].parse_args(["a", "--model", "b", "--data", "d"]))


def _generated():
    for name, parser in VERBS.items():
        for action in parser._actions:
            if hasattr(action, "config_field"):
                yield name, action


def test_generated_flags_default_to_the_dataclass_default():
    from sparseft.cli.train_cmd import resolve_lr

    seen = 0
    for name, action in _generated():
        cls, field = action.config_field
        seen += 1
        if field == "lr":  # None = "the method's default", resolved from train/defaults.py
            assert action.default is None
            continue
        assert action.default == field_default(cls, field), f"{name} {action.option_strings[0]} ({cls.__name__})"
        assert action.help and action.help.split(".")[0] in field_docs(cls)[field].replace("%", "%%")
    assert seen > 40
    # the resolved lr of each method is its config class's default
    from sparseft.compress.prune.stage import PruneFinetuneConfig
    from sparseft.sft.stage import SFTConfig
    from sparseft.train.config import TrainConfig
    from sparseft.train.lora_stage import LoRAStageConfig

    for method, cls in (("train", TrainConfig), ("sft", SFTConfig), ("lora", LoRAStageConfig),
                        ("prune_finetune", PruneFinetuneConfig)):
        assert resolve_lr(method, None) == field_default(cls, "lr")
    assert resolve_lr("sft", 3e-3) == 3e-3


def test_every_documented_training_field_has_a_flag():
    from sparseft.cli.train_cmd import LORA_FIELDS, SFT_FIELDS, TRAIN_SKIP
    from sparseft.train.config import TrainConfig

    train = VERBS["train"]
    flags = {a.config_field[1] for a in train._actions if getattr(a, "config_field", (None,))[0] is TrainConfig}
    documented = set(field_docs(TrainConfig))
    assert documented - flags == set(TRAIN_SKIP), "document the new field's flag or add it to TRAIN_SKIP"
    from dataclasses import fields

    assert {f.name for f in fields(TrainConfig)} <= documented, "every TrainConfig field is in its Args: table"
    for group in (SFT_FIELDS, LORA_FIELDS):
        assert all(any(getattr(a, "config_field", (0, 0))[1] == f for a in train._actions) for f in group)


def test_one_mask_default_and_one_lr_table():
    from sparseft.chat.stage import ChatSFTConfig
    from sparseft.masks.config import DEFAULT_MASK
    from sparseft.sft.stage import SFTConfig
    from sparseft.train.defaults import DEFAULT_LR

    assert DEFAULT_MASK == "fisher"
    assert SFTConfig().mask == ChatSFTConfig().mask == DEFAULT_MASK
    assert _option(VERBS["train"], "--mask").default == _option(VERBS["chat-sft"], "--mask").default == DEFAULT_MASK
    assert SFTConfig().lr == DEFAULT_LR["sft"] and SFTConfig().lr != DEFAULT_LR["train"]


def test_train_recipe_records_the_methods_lr(tmp_path):
    from sparseft.cli.train_cmd import build_recipe_dict
    from sparseft.train.defaults import DEFAULT_LR

    def stage(*argv):
        return build_recipe_dict(VERBS["train"].parse_args(["--train", "t.txt", *argv]))["stages"][0]

    assert stage()["lr"] == DEFAULT_LR["train"]
    assert stage("--method", "sft")["lr"] == DEFAULT_LR["sft"]
    assert stage("--method", "lora", "--lora-rank", "4")["lr"] == DEFAULT_LR["lora"]
    assert stage("--method", "lora", "--lora-rank", "4")["rank"] == 4
    assert stage("--method", "sft", "--lr", "1e-2")["lr"] == 1e-2
    assert stage("--set", "heads=[classifier]", "--no-progress")["heads"] == ["classifier"]
    assert stage("--no-progress")["progress"] is False and "progress" not in stage()
    with pytest.raises(ValueError, match="--density need --method sft"):
        stage("--density", "0.01")
    from sparseft.cli.chat_cmd import build_recipe_dict as chat_recipe

    chat = chat_recipe(VERBS["chat-sft"].parse_args(["--train", "t.jsonl", "--mode", "sparse"]))
    sft = next(s for s in chat["stages"] if s["method"] == "chat_sft")
    assert sft["train"]["lr"] == DEFAULT_LR["chat_sparse"] and sft["mask"] == "fisher"


def test_help_states_a_zero_default_but_not_an_empty_one():
    train = VERBS["train"]
    fmt = train._get_formatter()
    assert fmt._expand_help(_option(train, "--save-every")).endswith("(default: 0)")
    assert "(default" not in fmt._expand_help(_option(train, "--max-steps"))     # None
    assert "(default" not in fmt._expand_help(_option(train, "--no-cost"))       # store_true


def test_prune_cubic_flags_reach_the_stage_and_are_refused_with_oneshot():
    from sparseft.cli.prune_cmd import build_recipe_dict

    base = ["prune", "--model", "minilm", "--task", "ner", "--method", "movement", "--sparsity", "0.9",
            "--train", "t.txt", "--epochs", "3", "-o", "/tmp/x"]
    args = build_parser().parse_args(base + ["--schedule", "cubic", "--prune-start", "0.33", "--regrow"])
    stage = next(s for s in build_recipe_dict(args)["stages"] if s["method"] == "prune_finetune")
    assert (stage["prune_start"], stage["regrow"], stage["final_sparsity"]) == (0.33, True, 0.9)
    assert "prune_end" not in stage                       # unchanged flags keep the config's default
    args = build_parser().parse_args(base + ["--prune-start", "0.33"])
    with pytest.raises(ValueError, match="--prune-start only apply with --schedule cubic"):
        build_recipe_dict(args)

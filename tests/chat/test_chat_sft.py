"""Chat SFT end to end on a tiny Llama: full / LoRA / sparse modes, eval, chat CLI, launch config."""

from __future__ import annotations

import io
import json

import pytest
import torch

from sparseft.chat.data import ChatDataConfig, load_conversations
from sparseft.chat.generate import GenerateConfig, generate_reply
from sparseft.chat.launch import deepspeed_config, launch_command, write_accelerate_config
from sparseft.chat.loss import response_loss
from sparseft.chat.modes import lora_param_count, lora_rank_for_count
from sparseft.chat.stage import ChatEvalConfig, ChatSFTConfig
from sparseft.chat.template import resolve_template, tokenize_conversations
from sparseft.cli.main import main


def _sft(tiny_llama_dir, files, out, *extra) -> dict:
    train, evals = files
    rc = main(["chat-sft", "--model", str(tiny_llama_dir), "--train", str(train), "--eval", str(evals),
               "--output-dir", str(out), "--max-steps", "8", "--log-every", "1", "--eval-every", "never",
               "--eval-before", *extra])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())["stages"]


def test_full_and_lora_lower_the_response_loss(tiny_llama_dir, toy_chat_files, tmp_path, monkeypatch, capsys):
    full = _sft(tiny_llama_dir, toy_chat_files, tmp_path / "full", "--lr", "3e-3")
    assert full["after"]["response_loss"] < full["before"]["response_loss"] - 0.2
    assert (tmp_path / "full" / "model" / "model.safetensors").exists()

    lora = _sft(tiny_llama_dir, toy_chat_files, tmp_path / "lora", "--lora_dim", "4", "--lr", "3e-2",
                "--packing", "--gradient_checkpointing", "--no-save")
    assert lora["sft"]["mode"] == "lora" and lora["sft"]["lora_layers"] == 14  # 2 layers x 7 Linear
    assert lora["sft"]["gradient_checkpointing"]
    assert lora["sft"]["trainable_params"] < full["sft"]["trainable_params"] / 4
    assert lora["sft"]["packing"] and lora["sft"]["examples_per_row"] > 1
    assert lora["after"]["response_loss"] < lora["before"]["response_loss"] - 0.05
    assert (tmp_path / "lora" / "sft" / "adapter" / "adapter_config.json").exists()
    # `sparseft chat MODEL --adapter DIR` merges the adapter and answers on a pipe
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("john visited\n"))
    assert main(["chat", str(tiny_llama_dir), "--adapter", str(tmp_path / "lora" / "sft" / "adapter"),
                 "--max-new-tokens", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_sparse_mode_saves_a_diff_that_reproduces_the_model(tiny_llama_dir, toy_chat_files, tmp_path,
                                                             monkeypatch, capsys):
    sft = pytest.importorskip("sparseft.sft")
    if not hasattr(sft, "sparse_finetune"):
        pytest.skip("the sparse fine-tuning engine is not available yet")
    from sparseft.export.sparse_diff import apply_diff_, load_diff
    from sparseft.load.model import load_model

    stages = _sft(tiny_llama_dir, toy_chat_files, tmp_path / "sp", "--mode", "sparse", "--density", "0.05",
                  "--lr", "3e-2")
    assert stages["sft"]["mode"] == "sparse"
    assert stages["after"]["response_loss"] < stages["before"]["response_loss"] - 0.05
    diff = load_diff(tmp_path / "sp" / "sft" / "diff")
    assert diff.count == stages["sft"]["trainable_params"]
    # base + diff gives the trained model's response loss back
    model = load_model(str(tiny_llama_dir), "lm")
    apply_diff_(model, diff)
    convs = load_conversations(ChatDataConfig(train=str(toy_chat_files[0]), eval=str(toy_chat_files[1])))[1]
    with pytest.warns(UserWarning):
        tmpl = resolve_template(resolve_tokenizer(tiny_llama_dir))
    feats = tokenize_conversations(convs, tmpl, max_seq_len=512)
    assert response_loss(model, feats, pad_id=0)["loss"] == pytest.approx(stages["after"]["response_loss"], rel=1e-5)
    # and `sparseft chat MODEL --diff DIFF` runs on a pipe
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("john visited\n/exit\n"))
    assert main(["chat", str(tiny_llama_dir), "--diff", str(tmp_path / "sp" / "sft" / "diff"),
                 "--max-new-tokens", "4"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def resolve_tokenizer(path):
    from sparseft.load.model import load_tokenizer

    return load_tokenizer(str(path))


def test_chat_cli_reads_a_pipe(tiny_llama_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("john visited\n\n/reset\nmary works\n/exit\nnot read\n"))
    assert main(["chat", str(tiny_llama_dir), "--max-new-tokens", "5", "--sample", "--seed", "0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # one reply per user line, none after /exit


def test_generation_greedy_and_seeded_sampling(tiny_chat_model, plain_tokenizer):
    tmpl = resolve_template(plain_tokenizer, "fallback")
    msgs = [{"role": "user", "content": "john visited"}]
    greedy = GenerateConfig(max_new_tokens=6)
    assert generate_reply(tiny_chat_model, tmpl, msgs, greedy) == generate_reply(tiny_chat_model, tmpl, msgs, greedy)
    sample = GenerateConfig(max_new_tokens=6, do_sample=True, temperature=1.5, seed=3)
    a, b = (generate_reply(tiny_chat_model, tmpl, msgs, sample) for _ in range(2))
    assert a == b
    replies = {generate_reply(tiny_chat_model, tmpl, msgs, sample.replace(seed=s)) for s in range(6)}
    assert len(replies) > 1  # sampling really samples (a random tiny model is near uniform)
    with pytest.raises(ValueError, match="temperature"):
        GenerateConfig(temperature=0)


def test_configs_validate_and_round_trip():
    cfg = ChatSFTConfig(mode="lora", train={"lr": 1e-3, "batch_size": 2}, output_dir="x", seed=3)
    assert cfg.train.output_dir == "x" and cfg.train.seed == 3 and cfg.train.lr == 1e-3
    again = ChatSFTConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert ChatEvalConfig.from_dict(ChatEvalConfig(samples=2).to_dict()).samples == 2
    assert ChatDataConfig.from_dict(ChatDataConfig(data_split="2,4,4").to_dict()).data_split == "2,4,4"
    with pytest.raises(ValueError, match="valid choices: full, sparse, lora"):
        ChatSFTConfig(mode="qlora")
    with pytest.raises(ValueError, match="loss_on"):
        ChatDataConfig(loss_on="prompt")
    with pytest.raises(ValueError, match="data_split_index"):
        ChatDataConfig(data_split="2,4,4", data_split_index=3)
    with pytest.raises(ValueError, match="unknown field"):
        ChatSFTConfig(train={"nope": 1})


def test_data_split_and_held_out_eval(toy_chat_files):
    train, _ = toy_chat_files
    tr, ev, fmt = load_conversations(ChatDataConfig(train=str(train), eval_fraction=0.25))
    assert fmt == "human_assistant" and (len(tr), len(ev)) == (12, 4)
    tr, ev, _ = load_conversations(ChatDataConfig(train=str(train), eval=str(train), data_split="2,4,4"))
    # DeepSpeed-Chat portion 0 of 16 records with weights 2,4,4: bounds 0,3,9,15 shifted by the
    # rounding excess (-1) to 0,4,10,16
    assert len(tr) == len(ev) == 4


def test_lora_rank_for_count(tiny_chat_model):
    per_rank = lora_param_count(tiny_chat_model, "layers.", 1)
    assert per_rank == 2 * (2 * (32 + 32) + 2 * (32 + 16) + 3 * (32 + 64))  # q,o / k,v / gate,up,down
    assert lora_rank_for_count(tiny_chat_model, "layers.", 3 * per_rank + 10) == 3
    with pytest.raises(ValueError, match="matches no Linear layer"):
        lora_param_count(tiny_chat_model, "decoder.layers.", 1)


def test_deepspeed_flags_map_to_launch_config(tmp_path, tiny_llama_dir, toy_chat_files, capsys):
    ds = deepspeed_config(zero_stage=3, offload=True, batch_size=2, grad_accum=4, num_processes=2, max_grad_norm=1.0)
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert deepspeed_config(zero_stage=2, offload=True, batch_size=1, grad_accum=1, num_processes=1,
                            max_grad_norm=None)["zero_optimization"]["offload_param"]["device"] == "none"
    path = write_accelerate_config(tmp_path, zero_stage=2, offload=False, batch_size=2, grad_accum=1,
                                   num_processes=2, max_grad_norm=1.0)
    import yaml

    acc = yaml.safe_load(path.read_text())
    assert acc["distributed_type"] == "DEEPSPEED" and acc["num_processes"] == 2
    assert json.loads(open(acc["deepspeed_config"]["deepspeed_config_file"]).read())["zero_optimization"]["stage"] == 2
    cmd = launch_command("r.yaml", num_processes=2, accelerate_config=path)
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"] and cmd[-2:] == ["run", "r.yaml"]
    assert "--nproc_per_node" in launch_command("r.yaml", num_processes=2)
    # CLI: offload without ZeRO, and ZeRO without DeepSpeed, stop with one clear line
    base = ["chat-sft", "--model", str(tiny_llama_dir), "--train", str(toy_chat_files[0]),
            "--output-dir", str(tmp_path / "ds")]
    assert main(base + ["--offload"]) == 2
    assert "--offload needs --zero_stage" in capsys.readouterr().err
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        assert main(base + ["--zero_stage", "2", "--gradient_checkpointing", "--max_seq_len", "64"]) == 2
        assert "needs DeepSpeed, which is not installed: pip install deepspeed" in capsys.readouterr().err


def test_cpu_workers_without_accelerate_cpu_flag_are_refused(monkeypatch):
    from sparseft.chat.launch import check_cpu_distributed, launch_env

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    with pytest.raises(ValueError, match="ACCELERATE_USE_CPU"):
        check_cpu_distributed()
    assert launch_env({})["ACCELERATE_USE_CPU"] == "true"

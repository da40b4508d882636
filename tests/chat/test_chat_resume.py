"""Chat SFT resume on a tiny Llama: a killed LoRA run resumes bit-exactly from a lean checkpoint
(the adapter + optimizer, no copy of the frozen base); a second `chat-sft` on other data into the
same folder is a one-line error, an identical finished one says so."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparseft.chat.data import ChatDataConfig, build_chat_data
from sparseft.chat.loss import ResponseLoss
from sparseft.chat.modes import apply_lora
from sparseft.chat.packing import ChatCollator
from sparseft.cli.main import main
from sparseft.train.checkpoint import WEIGHTS, checkpoint_dir
from sparseft.train.config import TrainConfig
from sparseft.train.loop import train


class _Kill(Exception):
    pass


def test_killed_lora_chat_run_resumes_bit_exactly(tiny_llama_dir, plain_tokenizer, toy_chat_files, tmp_path):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny tokenizer has no chat template: the fallback is used
        chat = build_chat_data(ChatDataConfig(train=str(toy_chat_files[0]), eval=str(toy_chat_files[1])),
                               plain_tokenizer)

    def fresh():
        torch.manual_seed(0)  # LoRA A matrices are initialised from the global RNG
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        return apply_lora(base, rank=2, alpha=None, module_name="layers.", dropout=0.1)

    def cfg(name):
        return TrainConfig(output_dir=str(tmp_path / name), epochs=2, batch_size=4, lr=3e-2, warmup_ratio=0.0,
                           save_every=3, mixed_precision="no", eval_every="never", progress=False,
                           log_every=1, group_by_length=False)

    kw = {"collate_fn": ChatCollator(0), "loss_fn": ResponseLoss()}
    ref = fresh()
    train(ref, chat.train, cfg("ref"), **kw)

    def kill(model, step):
        if step == 7:  # 4 steps per epoch: the last checkpoint is the mid-epoch one at step 6
            raise _Kill()

    with pytest.raises(_Kill):
        train(fresh(), chat.train, cfg("run"), post_step=[kill], **kw)
    ckpt = checkpoint_dir(tmp_path / "run")
    with safe_open(str(ckpt / WEIGHTS), "pt") as f:
        saved = set(f.keys())
    assert saved and all("lora_" in k or not k.endswith("weight") for k in saved)
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in fresh().get_base_model().state_dict().items()}, str(full))
    assert (ckpt / WEIGHTS).stat().st_size < 0.25 * full.stat().st_size
    assert json.loads((ckpt / "state.json").read_text())["identity"]["model"]["frozen_tensors"] > 0

    resumed = fresh()
    result = train(resumed, chat.train, cfg("run"), **kw)
    assert result.resumed_from_step == 6 and result.steps == 8
    a, b = ref.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_second_chat_sft_on_other_data_is_refused(tiny_llama_dir, toy_chat_files, tmp_path, capsys):
    train_file, eval_file = toy_chat_files
    other = tmp_path / "other.jsonl"
    other.write_text(train_file.read_text().replace("paris", "berlin"))
    out = tmp_path / "run"

    def sft(data, *extra):
        return main(["chat-sft", "--model", str(tiny_llama_dir), "--train", str(data), "--eval", str(eval_file),
                     "--output-dir", str(out), "--mode", "lora", "--lora_dim", "2", "--max-steps", "3",
                     "--eval-every", "never", "--no-save", *extra])

    assert sft(train_file) == 0
    capsys.readouterr()
    assert sft(other) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sparseft chat-sft: error")]
    assert len(err) == 1 and "train data file" in err[0] and str(other.resolve()) in err[0]
    assert sft(train_file) == 0
    assert "holds a finished run (3 steps)" in capsys.readouterr().out
    assert sft(other, "--no-resume") == 0

"""Faults during saves, with a real `kill -9` of a child process (tests/train/kill_child.py):
the previous checkpoint / artifact stays intact, the half-written copy has a temporary name and
does not load as complete, it is removed when the next run starts, and the resumed run reaches
the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kill_child import json_cfg
from sparseft.load.data import DataConfig, build_task_data
from sparseft.load.model import load_model, load_tokenizer
from sparseft.load.tokenize import PadCollator
from sparseft.train.checkpoint import WEIGHTS, CheckpointError, checkpoint_dir, load_weights, verify_manifest
from sparseft.train.config import TrainConfig
from sparseft.train.loop import train
from sparseft.utils.io import clean_stale

CHILD = Path(__file__).with_name("kill_child.py")


def _start_and_kill(args: list[str], flag: Path, timeout: float = 120.0) -> None:
    """Run the child until it signals (via `flag`) that it is inside the save, then SIGKILL it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, str(CHILD), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not flag.exists():
            if proc.poll() is not None:
                pytest.fail(f"child exited ({proc.returncode}) before blocking in the save:\n{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("child did not reach the save in time")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_kill_9_during_an_atomic_folder_write_keeps_the_old_folder(tmp_path):
    flag = tmp_path / "flag"
    _start_and_kill(["dir", str(tmp_path), str(flag)], flag)
    target = tmp_path / "artifact"
    assert json.loads((target / "complete.json").read_text()) == {"version": 1}
    assert (target / "part0.bin").read_bytes() == b"v1" * 1000  # untouched by the killed write
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".artifact.")]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")
    assert not (leftovers[0] / "complete.json").exists()  # the partial copy is not a complete one
    assert clean_stale(target) == leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "flag"]


def test_kill_9_during_a_checkpoint_save_then_resume(tiny_bert_dir, toy_ner_files, tmp_path):
    train_file, dev_file = toy_ner_files
    out, flag = tmp_path / "run", tmp_path / "flag"
    _start_and_kill(["train", str(tiny_bert_dir), str(train_file), str(dev_file), str(out), str(flag), "4"], flag)

    # the previous checkpoint (step 2) is intact and complete; the killed save (step 4) left a
    # temporary folder with weights but no manifest: it does not load as a checkpoint
    last = checkpoint_dir(out)
    verify_manifest(last)
    assert json.loads((last / "state.json").read_text())["loop"]["step"] == 2
    leaks = list((out / "checkpoints").glob(".last.*.tmp"))
    assert len(leaks) == 1 and (leaks[0] / WEIGHTS).exists() and (leaks[0] / "optimizer.pt").exists()

    tokenizer = load_tokenizer(str(tiny_bert_dir))
    data = build_task_data(DataConfig(task="ner", train=str(train_file), eval=str(dev_file)), tokenizer)

    def fresh():
        torch.manual_seed(0)
        return load_model(str(tiny_bert_dir), "ner", labels=data.labels)

    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        load_weights(fresh(), leaks[0])

    collate = PadCollator(tokenizer.pad_token_id)
    resumed = fresh()
    result = train(resumed, data.train, TrainConfig(**json_cfg(str(out))), collate_fn=collate)
    assert result.resumed_from_step == 2 and result.steps == 12
    assert not list((out / "checkpoints").glob(".*.tmp"))  # the leak is gone after the resume
    ref = fresh()
    train(ref, data.train, TrainConfig(**json_cfg(str(tmp_path / "ref"))), collate_fn=collate)
    a, b = ref.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

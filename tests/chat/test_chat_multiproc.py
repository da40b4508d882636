"""2 CPU processes (torchrun, gloo) give the same loss curve as 1 process at the same global batch.

`sparseft chat-sft --num-processes 2` writes the recipe and starts
`python -m torch.distributed.run --standalone --nproc_per_node 2 -m sparseft.cli.main run ...`.
Global batch 4 = 2 processes x 2 vs 1 process x 4; the loop shards batches so every step sees the
same 4 examples, and ResponseLoss normalises by the labelled tokens of the global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sparseft.cli.main import main


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "sft" / "log.jsonl").read_text().splitlines()]


def _run_two_processes(args: list[str], out) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "SPARSEFT_DEBUG": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "sparseft.cli.main", "chat-sft", *args, "--num-processes", "2",
                           "--output-dir", str(out)], capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _log(out)


def test_two_processes_match_one_process(tiny_llama_dir, toy_chat_files, tmp_path):
    train, evals = toy_chat_files
    common = ["--model", str(tiny_llama_dir), "--train", str(train), "--eval", str(evals), "--max-steps", "4",
              "--lr", "3e-3", "--log-every", "1", "--eval-every", "never", "--no-save", "--seed", "7"]
    two = _run_two_processes(common + ["--batch-size", "2"], tmp_path / "two")
    assert main(["chat-sft", *common, "--batch-size", "4", "--output-dir", str(tmp_path / "one")]) == 0  # in-process
    one = _log(tmp_path / "one")
    # rank 0 alone writes the log: one record per step proves Accelerate ran as 2 synced processes
    assert [r["step"] for r in two] == [1, 2, 3, 4] == [r["step"] for r in one]
    report = json.loads((tmp_path / "two" / "metrics.json").read_text())["stages"]["sft"]
    assert report["num_processes"] == 2
    loss_one, loss_two = [r["loss"] for r in one], [r["loss"] for r in two]
    assert loss_one[-1] < loss_one[0] - 0.05, "training must move the loss for the comparison to mean anything"
    assert loss_two == pytest.approx(loss_one, rel=1e-4, abs=1e-5)

"""2 CPU processes (torchrun, gloo) give the same loss curve as 1 process at the same global batch.

`sparseft chat-sft --num-processes 2` writes the recipe and starts
`python -m torch.distributed.run --standalone --nproc_per_node 2 -m sparseft.cli.main run ...`.
Global batch 4 = 2 processes x 2 vs 1 process x 4 (full fine-tuning), and 2 packed rows = 2 x 1
vs 1 x 2 (LoRA with packing); the loop shards batches so every step sees the same examples, and
ResponseLoss normalises by the labelled tokens of the global batch.
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


@pytest.mark.parametrize("mode,extra,steps,micro", [
    ("full", [], 4, 2),                                                     # 16 examples, global batch 4
    ("lora_packed", ["--lora_dim", "2", "--packing", "--max-seq-len", "64"], 3, 1),  # 8 packed rows, batch 2
])
def test_two_processes_match_one_process(mode, extra, steps, micro, tiny_llama_dir, toy_chat_files, tmp_path):
    train, evals = toy_chat_files
    common = ["--model", str(tiny_llama_dir), "--train", str(train), "--eval", str(evals), "--max-steps", str(steps),
              "--lr", "3e-3" if mode == "full" else "3e-2", "--log-every", "1", "--eval-every", "never", "--no-save",
              "--seed", "7", *extra]
    two = _run_two_processes(common + ["--batch-size", str(micro)], tmp_path / "two")
    assert main(["chat-sft", *common, "--batch-size", str(2 * micro), "--output-dir", str(tmp_path / "one")]) == 0
    one = _log(tmp_path / "one")  # the 1-process run, in this process
    # rank 0 alone writes the log: one record per step proves Accelerate ran as 2 synced processes
    assert [r["step"] for r in two] == list(range(1, steps + 1)) == [r["step"] for r in one]
    report = json.loads((tmp_path / "two" / "metrics.json").read_text())["stages"]["sft"]
    assert report["num_processes"] == 2
    loss_one, loss_two = [r["loss"] for r in one], [r["loss"] for r in two]
    assert loss_one[-1] < loss_one[0] - 0.05, "training must move the loss for the comparison to mean anything"
    assert loss_two == pytest.approx(loss_one, rel=1e-4, abs=1e-5)

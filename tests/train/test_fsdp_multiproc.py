"""FSDP2 (and DeepSpeed ZeRO-2/3 where installed) with 2 CPU processes (gloo) == 1 process at the
same global batch, for full, sparse and LoRA fine-tuning of a tiny Llama, and the saved model /
diff / adapter is the same (complete: no empty tensors).

`sparseft chat-sft --distributed fsdp --num-processes 2` starts torchrun; each process shards a
replica of the model with `fully_shard` (train/distributed.py), trains on its half of every global
batch, and gathers the full state back before the stage saves. The 1-process run (global batch 4,
no sharding) runs in this process. Each torchrun start costs ~10-15 s on 2 cores.
DeepSpeed (not installed by `make test`) runs through `accelerate launch` with the generated
config; on CPU its own CPU accelerator and a gloo group (train/loop.py `_engine_plugins`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sparseft.cli.main import main

MODES = {  # mode -> (extra flags, saved artifact folder under the run, file in it)
    "full": (["--mode", "full", "--lr", "3e-3"], "model", "model.safetensors"),
    "sparse": (["--mode", "sparse", "--density", "0.1", "--lr", "3e-2", "--no-save"], "sft/diff", "diff.safetensors"),
    # fisher: 32 calibration batches; under fsdp each rank runs its half of every global batch
    # through a sharded replica and sums the squares of its gradient shard (sft/sharded_select.py)
    "sparse_fisher": (["--mode", "sparse", "--mask", "fisher", "--density", "0.1", "--lr", "3e-2", "--no-save"],
                      "sft/diff", "diff.safetensors"),
    "lora": (["--mode", "lora", "--lora_dim", "2", "--lr", "3e-2", "--no-save"], "sft/adapter",
             "adapter_model.safetensors"),
}


@pytest.fixture
def toy_chat_files(tmp_path) -> tuple[Path, Path]:
    """16 train / 4 eval Dolly-style records with a learnable pattern (as tests/chat/conftest.py)."""
    pairs = [("john visited", "paris city"), ("mary works", "london team"),
             ("smith lives", "berlin club"), ("google bank", "new york today")]
    rows = [json.dumps({"text": f"### Human: {q} ### Assistant: {a}"}) + "\n" for q, a in pairs]
    train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(rows * 4))
    evals.write_text("".join(rows))
    return train, evals


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "sft" / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r] + [r["eval"]["loss"] for r in rows if "eval" in r]


def _tensors(run: Path, sub: str, name: str) -> dict:
    files = sorted((run / sub).glob("*.safetensors"))
    assert files, f"nothing saved in {run / sub}"
    path = run / sub / name if (run / sub / name).exists() else files[0]
    return load_file(str(path))


HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
ENGINES = [  # (mode, engine flags); DeepSpeed rows run where it is installed (not in `make test`)
    *[(mode, ["--distributed", "fsdp"]) for mode in MODES],  # sparse modes select their masks from shards
    *[pytest.param(mode, flags, marks=pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed not installed"))
      for mode, flags in (("full", ["--zero_stage", "2", "--offload"]), ("sparse", ["--zero_stage", "3", "--offload"]),
                          ("lora", ["--zero_stage", "3"]))],
]


@pytest.mark.parametrize("mode,engine", ENGINES, ids=lambda v: v if isinstance(v, str) else "-".join(v).strip("-"))
def test_sharded_two_processes_match_one(mode, engine, tiny_llama_dir, toy_chat_files, tmp_path):
    extra, sub, fname = MODES[mode]
    train, evals = toy_chat_files
    common = ["--model", str(tiny_llama_dir), "--train", str(train), "--eval", str(evals), "--max-steps", "3",
              "--log-every", "1", "--eval-every", "1", "--seed", "7", "--mixed-precision", "no", *extra]  # best weights: gathered, saved, reloaded
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "SPARSEFT_DEBUG": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    two = subprocess.run([sys.executable, "-m", "sparseft.cli.main", "chat-sft", *common, "--batch-size", "2",
                          "--num-processes", "2", *engine, "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    if "fsdp" in engine:  # proof that the replica really was sharded: each process holds about half
        line = next(x for x in two.stderr.splitlines() if x.startswith("fsdp:"))
        held, total = (int(v.replace(",", "")) for v in line.split("holds ")[1].split(" parameter")[0].split(" of "))
        assert 0.4 * total < held < 0.6 * total, line
        if mode.startswith("sparse"):  # the masks too: each rank scored only its rows (~half the entries)
            line = next(x for x in two.stderr.splitlines() if x.startswith("sharded mask selection"))
            scored, total = (int(v.replace(",", "")) for v in line.split("scored ")[1].split(" targeted")[0].split(" of "))
            assert 0.4 * total < scored < 0.6 * total, line
    else:  # DeepSpeed ran with 2 synchronised processes (rank 0 alone writes the report)
        report = json.loads((tmp_path / "two" / "metrics.json").read_text())["stages"]["sft"]
        assert report["num_processes"] == 2
    assert main(["chat-sft", *common, "--batch-size", "4", "--output-dir", str(tmp_path / "one")]) == 0

    one_loss, two_loss = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one_loss) == len(two_loss) == 6  # 3 training losses, 3 evaluations
    assert one_loss[-1] < one_loss[0], "training must move the loss for the comparison to mean anything"
    assert two_loss == pytest.approx(one_loss, rel=1e-4, abs=1e-5)

    a, b = _tensors(tmp_path / "one", sub, fname), _tensors(tmp_path / "two", sub, fname)
    assert sorted(a) == sorted(b) and a
    if mode.startswith("sparse"):  # the same entries selected: saved masks and the diff's positions
        ma, mb = (load_file(str(tmp_path / run / "sft" / "sft_masks.safetensors")) for run in ("one", "two"))
        assert sorted(ma) == sorted(mb) and all(ma[n].equal(mb[n]) for n in ma)
        assert all(a[k].equal(b[k]) for k in a if k.endswith("::indices"))
    for key in a:
        assert a[key].shape == b[key].shape and a[key].numel() > 0, key  # nothing empty (ZeRO-3 bug class)
        # AdamW turns float-rounding differences of near-zero gradients into ~lr-sized steps on a
        # few entries; 1e-4 is ~1% of how far 3 steps move the weights (lr 3e-3 .. 3e-2)
        assert (a[key].float() - b[key].float()).abs().max() < 1e-4, key

"""`sparseft train` under torchrun with 2 CPU processes (gloo) == 1 process at the same global batch.

Classification loss is a mean over examples, so 2 ranks x batch 2 (gradients averaged by DDP)
equals 1 rank x batch 4 on the same examples; dropout is switched off so both runs are
deterministic. Each torchrun start costs ~10 s, so this is the suite's slowest test.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _no_dropout_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _losses(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "finetune" / "log.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


@pytest.mark.slow
@pytest.mark.parametrize("method,port", [
    (["--method", "train"], 29517),
    # sparse fine-tuning: rank 0's mask is broadcast, only the O(k) values are all-reduced
    (["--method", "sft", "--mask", "magnitude", "--density", "0.05"], 29527),
], ids=["full", "sft"])
def test_two_cpu_processes_match_one(tiny_bert_dir, toy_cls_file, tmp_path, method, port):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this python")
    model = _no_dropout_copy(tiny_bert_dir, tmp_path / "model")
    common = ["train", "--model", str(model), "--task", "cls", "--train", str(toy_cls_file), "--epochs", "1",
              "--lr", "1e-3", "--no-cost", "--set", "group_by_length=false", "--set", "progress=false",
              "--set", "log_every=1", "--set", "eval_every=never", *method,
              # fp32 on both sides: "auto" probes bf16 in one process only (several skip the probe),
              # and on a CPU with bf16 units the one-process run would then differ by precision
              "--mixed-precision", "no"]
    env_py = [sys.executable, "-m", "sparseft.cli.main"]
    one = subprocess.run([*env_py, *common, "--batch-size", "4", "--output-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m",
                          "sparseft.cli.main", *common, "--batch-size", "2", "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 9  # 36 training examples / global batch 4
    assert a == pytest.approx(b, abs=1e-5)
    assert a[-1] != a[0]  # it trained
    assert (tmp_path / "two" / "model" / "config.json").exists()
    if "sft" in method:
        assert (tmp_path / "two" / "diff" / "manifest.json").exists()

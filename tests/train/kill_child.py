"""Child process for test_save_faults.py (not a test module): runs a save and blocks inside it,
after part of the new files are written, so the parent can `kill -9` it right there.

    python kill_child.py train MODEL_DIR TRAIN DEV OUT FLAG STEP   # training; blocks in the checkpoint at STEP
    python kill_child.py dir OUT FLAG                              # atomic_dir: v1 complete, v2 blocks half-written

The block is test-side only: torch.save (or the write loop) is wrapped here, not in sparseft.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _block(flag: str, note: str) -> None:
    Path(flag).write_text(note)  # tells the parent we are inside the save
    time.sleep(300)


def train_child(model_dir, train_file, dev_file, out, flag, kill_step) -> None:
    import torch

    from sparseft.load.data import DataConfig, build_task_data
    from sparseft.load.model import load_model, load_tokenizer
    from sparseft.load.tokenize import PadCollator
    from sparseft.train.config import TrainConfig
    from sparseft.train.loop import train

    torch.set_num_threads(1)
    tokenizer = load_tokenizer(model_dir)
    data = build_task_data(DataConfig(task="ner", train=train_file, eval=dev_file), tokenizer)
    torch.manual_seed(0)
    model = load_model(model_dir, "ner", labels=data.labels)
    seen = {"step": 0}
    real_save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if seen["step"] == int(kill_step) and str(f).endswith("optimizer.pt"):
            _block(flag, str(f))

    torch.save = slow_save
    cfg = TrainConfig(**json_cfg(out))
    train(model, data.train, cfg, collate_fn=PadCollator(tokenizer.pad_token_id),
          post_step=[lambda m, step: seen.__setitem__("step", step)])


def json_cfg(out: str) -> dict:
    """The TrainConfig both the child and the parent's reference run use."""
    return dict(output_dir=out, epochs=2, batch_size=4, lr=5e-3, warmup_ratio=0.0, save_every=2,
                mixed_precision="no", eval_every="never", progress=False, log_every=1)


def dir_child(out: str, flag: str) -> None:
    from sparseft.utils.io import atomic_dir

    target = Path(out) / "artifact"
    with atomic_dir(target) as tmp:
        for i in range(3):
            (tmp / f"part{i}.bin").write_bytes(b"v1" * 1000)
        (tmp / "complete.json").write_text('{"version": 1}')
    with atomic_dir(target) as tmp:
        (tmp / "part0.bin").write_bytes(b"v2" * 1000)
        _block(flag, str(tmp))


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    train_child(*rest) if kind == "train" else dir_child(*rest)

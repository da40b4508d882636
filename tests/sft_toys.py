"""Toy set-ups shared by the mask, SFT and diff tests: a tiny BERT NER model plus data, and
helpers to train it for a few steps. Imported by tests/masks, tests/sft and tests/export."""

from __future__ import annotations

from pathlib import Path

import torch

from sparseft.load.data import DataConfig, build_task_data
from sparseft.load.model import load_model
from sparseft.load.tokenize import PadCollator
from sparseft.train.config import TrainConfig

MASK_METHODS = ("random", "magnitude", "fisher", "lottery", "regrow", "spiel_ag", "spiel_ma", "snr")
# Small, fast settings per method for the shared matrix (few batches / steps).
FAST_OPTIONS = {"random": {}, "magnitude": {}, "fisher": {"n_batches": 2},
                "lottery": {"steps": 3, "lr": 1e-2}, "regrow": {"every": 2, "grad_window": 1, "drop_fraction": 0.5},
                "spiel_ag": {"interval": 2, "accumulation_steps": 1, "n_batches": 2},
                "spiel_ma": {"interval": 2, "init": "random"}, "snr": {"n_batches": 2}}


def ner_data(tokenizer, train: Path, dev: Path):
    return build_task_data(DataConfig(task="ner", train=str(train), eval=str(dev), max_length=32), tokenizer)


def ner_model(model_dir: Path, labels, seed: int = 0):
    torch.manual_seed(seed)  # the new head is initialised from the seed
    return load_model(str(model_dir), "ner", labels=labels)


def train_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), max_steps=4, batch_size=8, lr=5e-3, warmup_ratio=0.0, weight_decay=0.0,
                mixed_precision="no", eval_every="never", progress=False, log_every=1, resume=False,
                group_by_length=False)
    base.update(kw)
    return TrainConfig(**base)


def collate(tokenizer) -> PadCollator:
    return PadCollator(tokenizer.pad_token_id)


def killing_loss(crash_at: int | None = None):
    """`model(**batch).loss`, raising KeyboardInterrupt (a simulated kill) on call number `crash_at`
    (every call counts: warm-up, mask selection and training steps)."""
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        if crash_at and calls["n"] == crash_at:
            raise KeyboardInterrupt("simulated kill")
        return m(**batch).loss

    return loss_fn


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def logits(model, data, tokenizer) -> torch.Tensor:
    batch = collate(tokenizer)(data.eval[:4])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


SENTENCES = [
    [("john", "B-PER"), ("smith", "I-PER"), ("visited", "O"), ("paris", "B-LOC"), (".", "O")],
    [("mary", "B-PER"), ("works", "O"), ("at", "O"), ("acme", "B-ORG"), ("corp", "I-ORG"), (".", "O")],
    [("the", "O"), ("german", "B-MISC"), ("team", "O"), ("was", "O"), ("in", "O"), ("london", "B-LOC")],
    [("google", "B-ORG"), ("is", "O"), ("in", "O"), ("new", "B-LOC"), ("york", "I-LOC"), (".", "O")],
]


def write_ner_files(directory: Path, repeat: int = 6) -> tuple[Path, Path]:
    """train (SENTENCES * repeat) and dev (SENTENCES) CoNLL files, tab separated."""
    directory.mkdir(parents=True, exist_ok=True)
    train, dev = directory / "train.conll", directory / "dev.conll"
    fmt = lambda sents: "\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sents) + "\n"  # noqa: E731
    train.write_text(fmt(SENTENCES * repeat))
    dev.write_text(fmt(SENTENCES))
    return train, dev


def write_cls_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = ["text,label"] + [("john visited paris today,travel" if i % 2 else "mary works at the bank,work")
                             for i in range(40)]
    path = directory / "cls.csv"
    path.write_text("\n".join(rows) + "\n")
    return path

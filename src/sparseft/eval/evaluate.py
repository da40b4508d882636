"""Run a model over tokenized eval features and score it for its task.

`evaluate(model, data)` dispatches on `data.task`:
  ner -> entity precision/recall/F1 (+ per type), predictions mapped back to words;
  cls -> accuracy and macro-F1;
  lm  -> mean token loss and perplexity.
Batches are formed from length-sorted examples (less padding, faster on CPU); results are put
back in the original order.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from sparseft.eval.metrics import classification_scores, ner_scores, perplexity
from sparseft.load.data import TaskData
from sparseft.load.tokenize import IGNORE_INDEX, PadCollator


def _batches(feats: Sequence[dict], batch_size: int):
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_logits(model, feats: Sequence[dict], *, pad_id: int = 0, batch_size: int = 64,
                   progress: bool = False):
    """Yield (feature index, logits [T, C] or [C]) for every feature, in length-sorted order."""
    was_training = model.training
    model.eval()
    collate = PadCollator(pad_id)
    device = _device(model)
    try:
        for idx in tqdm(list(_batches(feats, batch_size)), desc="eval", disable=not progress, leave=False):
            batch = collate([feats[i] for i in idx])
            batch.pop("labels", None)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
            for row, i in enumerate(idx):
                yield i, logits[row]
    finally:
        model.train(was_training)


def evaluate(model, data: TaskData, *, pad_id: int = 0, batch_size: int = 64, progress: bool = False) -> dict:
    """Score `model` on `data.eval`; returns a flat metrics dict (plus 'per_type' for NER)."""
    if not data.eval:
        raise ValueError("no evaluation examples")
    t0 = time.perf_counter()
    if data.task == "lm":
        out = _eval_lm(model, data.eval, pad_id=pad_id, batch_size=batch_size)
    elif data.task == "ner":
        out = _eval_ner(model, data, pad_id=pad_id, batch_size=batch_size, progress=progress)
    else:
        labels = [0] * len(data.eval)
        for i, logits in predict_logits(model, data.eval, pad_id=pad_id, batch_size=batch_size, progress=progress):
            labels[i] = int(logits.argmax())
        out = classification_scores([f["labels"] for f in data.eval], labels)
    out["eval_seconds"] = time.perf_counter() - t0
    out["n_examples"] = len(data.eval)
    return out


def _eval_ner(model, data: TaskData, *, pad_id: int, batch_size: int, progress: bool) -> dict:
    id2label = dict(enumerate(data.labels))
    preds: list[list[str]] = [[] for _ in data.eval]
    for i, logits in predict_logits(model, data.eval, pad_id=pad_id, batch_size=batch_size, progress=progress):
        labels = torch.tensor(data.eval[i]["labels"])
        keep = labels != IGNORE_INDEX           # first sub-token of each word: [n_words]
        preds[i] = [id2label[int(j)] for j in logits[: len(labels)][keep].argmax(-1)]
    gold = []
    for rec, pred in zip(data.eval_records, preds):
        gold.append(rec["tags"])
        pred.extend(["O"] * (len(rec["tags"]) - len(pred)))   # words cut off by max_length
    return ner_scores(gold, preds)


@torch.no_grad()
def _eval_lm(model, feats: Sequence[dict], *, pad_id: int, batch_size: int) -> dict:
    was_training = model.training
    model.eval()
    collate = PadCollator(pad_id)
    device = _device(model)
    total_nll, n_tokens = 0.0, 0
    try:
        for idx in _batches(feats, batch_size):
            batch = {k: v.to(device) for k, v in collate([feats[i] for i in idx]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            # shift: token t predicts t+1; logits [B, T-1, V], targets [B, T-1]
            targets = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                                    ignore_index=IGNORE_INDEX, reduction="sum")
            total_nll += float(nll)
            n_tokens += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return {"loss": total_nll / max(1, n_tokens), "perplexity": perplexity(total_nll, n_tokens),
            "n_tokens": n_tokens}

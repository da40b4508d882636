"""Response loss for chat SFT: training objective and held-out evaluation.

Training (`ResponseLoss`): the token-mean cross-entropy over labelled tokens of the *global*
micro-batch. Each process sums its token losses and divides by (labelled tokens over all
processes) / world size; DDP then averages gradients over processes, so the update equals the
one a single process computes on the whole global batch. A plain per-process mean would weight
tokens differently whenever processes hold different numbers of labelled tokens, and the 2-process
loss curve would drift from the 1-process one. (With grad_accum > 1 an optimizer step averages
the micro-batch means, as the training loop divides each micro-batch loss by grad_accum.)

Evaluation (`response_loss`): summed token loss / labelled tokens over the whole eval set, and
perplexity = exp(loss). Eval features carry assistant-only labels, so this is the held-out
*response* loss whatever `loss_on` the model was trained with.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
import torch.nn.functional as F

from sparseft.chat.packing import ChatCollator, model_inputs
from sparseft.load.tokenize import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token NLL over labelled positions, number of those positions).

    logits [B, T, V] predict labels shifted by one: logits[:, t] scores labels[:, t + 1].
    """
    shift_logits = logits[:, :-1, :].float()          # [B, T-1, V]
    shift_labels = labels[:, 1:].to(logits.device)     # [B, T-1]
    total = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (shift_labels != IGNORE_INDEX).sum()


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class ResponseLoss:
    """loss_fn(model, batch) for `sparseft.train.loop.train`: global token-mean over labels."""

    def __call__(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        logits = model(**model_inputs(batch)).logits   # [B, T, V]
        total, count = token_loss_sum(logits, batch["labels"])
        world = _world_size()
        count = count.detach().to(torch.float64)
        if world > 1:
            torch.distributed.all_reduce(count)  # labelled tokens over all processes
        return total * world / count.clamp(min=1).to(total.dtype)


@torch.no_grad()
def response_loss(model: torch.nn.Module, feats: Sequence[dict], *, pad_id: int, batch_size: int = 8) -> dict:
    """Held-out response loss and perplexity over `feats` (length-sorted batches).

    Returns {"loss", "perplexity", "response_tokens", "n_examples", "eval_seconds"}.
    """
    if not feats:
        raise ValueError("no evaluation examples")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = ChatCollator(pad_id)
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
    total, count = 0.0, 0
    try:
        for start in range(0, len(order), batch_size):
            batch = collate([feats[i] for i in order[start:start + batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            s, n = token_loss_sum(model(**model_inputs(batch)).logits, batch["labels"])
            total += float(s)
            count += int(n)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation examples have no response tokens (all labels are masked)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "response_tokens": count,
            "n_examples": len(feats), "eval_seconds": time.perf_counter() - t0}

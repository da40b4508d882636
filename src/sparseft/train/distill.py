"""Knowledge distillation from a dense teacher: a `loss_fn(model, batch)` for `train(...)`.

    loss = (1 - alpha) * task_loss
         + alpha * T^2 * KL(softmax(teacher_logits / T) || softmax(student_logits / T))
         + hidden_weight * mean_l MSE(student_hidden[l], teacher_hidden[map(l)])

Hinton et al.'s temperature-scaled KL on logits, averaged over real tokens (attention mask) for
token-level tasks (NER, LM) or over examples (classification); the T^2 factor keeps the gradient
scale independent of T. The optional hidden-state term (TinyBERT-style) compares hidden states
layer by layer (student layer l <-> teacher layer round(l * L_t / L_s), embeddings included);
it needs equal hidden sizes, which structured pruning keeps.

    teacher = copy.deepcopy(model)                       # the dense fine-tuned model
    loss_fn = make_distill_loss(teacher, DistillConfig(temperature=2.0, alpha=0.5))
    train(student, data.train, cfg, collate_fn=..., loss_fn=loss_fn)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparseft.config.base import BaseConfig, known_config


@known_config
@dataclass
class DistillConfig(BaseConfig):
    """Args:
        temperature: softmax temperature T (> 0) for both teacher and student logits.
        alpha: weight of the KD term in [0, 1]; the task loss gets 1 - alpha (alpha=1: KD only,
            batches need no labels).
        hidden_weight: weight of the hidden-state MSE term (0 disables it).
    """

    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.hidden_weight < 0:
            raise ValueError(f"hidden_weight must be >= 0, got {self.hidden_weight}")


class Teacher:
    """A frozen model in eval mode whose outputs are computed without gradients."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch: dict, *, hidden: bool = False):
        device = batch["input_ids"].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs, output_hidden_states=hidden)


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None,
          temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) per position, averaged over positions where mask is True.

    logits: [B, C] (classification) or [B, T, C] (token level); mask: [B, T] bool or None.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the teacher must share the label set / vocabulary")
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="none").sum(-1)   # [B] or [B, T]
    if mask is not None and kl.dim() == 2:
        m = mask.to(kl.dtype)
        return (kl * m).sum() / m.sum().clamp(min=1.0) * t * t
    return kl.mean() * t * t


def hidden_mse(student_hidden, teacher_hidden, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over student layers of the masked MSE to the mapped teacher layer ([B, T, H] each)."""
    n_s, n_t = len(student_hidden), len(teacher_hidden)
    losses = []
    for i, hs in enumerate(student_hidden):
        ht = teacher_hidden[round(i * (n_t - 1) / max(1, n_s - 1))]
        if hs.shape[-1] != ht.shape[-1]:
            raise ValueError(f"hidden sizes differ (student {hs.shape[-1]}, teacher {ht.shape[-1]}); "
                             f"set hidden_weight=0")
        err = ((hs.float() - ht.float()) ** 2).mean(-1)                            # [B, T]
        if mask is not None:
            m = mask.to(err.dtype)
            losses.append((err * m).sum() / m.sum().clamp(min=1.0))
        else:
            losses.append(err.mean())
    return torch.stack(losses).mean()


def make_distill_loss(teacher_model: torch.nn.Module, cfg: DistillConfig):
    """Return `loss_fn(model, batch) -> scalar` combining task loss, KD and hidden-state terms.

    The teacher is frozen and moved to the batch's device on first use.
    """
    teacher = Teacher(teacher_model)
    want_hidden = cfg.hidden_weight > 0

    def loss_fn(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        use_task = cfg.alpha < 1.0
        if use_task and "labels" not in batch:
            raise ValueError("the task loss needs labels in the batch; use alpha=1.0 for pure distillation")
        inputs = batch if use_task else {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs, output_hidden_states=want_hidden)
        t_out = teacher(batch, hidden=want_hidden)
        mask = batch.get("attention_mask")
        mask = mask.bool() if mask is not None else None
        loss = cfg.alpha * kd_kl(out.logits, t_out.logits, mask, cfg.temperature)
        if use_task:
            loss = loss + (1.0 - cfg.alpha) * out.loss
        if want_hidden:
            loss = loss + cfg.hidden_weight * hidden_mse(out.hidden_states, t_out.hidden_states, mask)
        return loss

    return loss_fn

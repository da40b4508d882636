"""Recipe stages `chat_sft` (train: full / sparse / LoRA) and `chat_eval` (response loss, samples).

Both read the tokenized chat data that the `chat_data` stage put in `ctx.state["chat_data"]`.

chat_sft
    * full:   all weights train with sparseft's loop.
    * sparse: `sparseft.sft.sparse_finetune` with a registered mask method (default
              masks.config.DEFAULT_MASK, fisher; density 1%); the SparseDiff is saved to
              <stage dir>/diff and the model keeps the merged weights for the stages after it.
    * lora:   peft LoRA (rank `lora_dim`, on Linear layers whose name contains
              `lora_module_name`); the adapter is saved to <stage dir>/adapter and, with
              `merge_lora` (default), merged into the model for the stages after it.
    The objective is `ResponseLoss` (token mean over labelled tokens of the global micro-batch);
    `packing` packs several examples per row (packing.py). Logged: trainable parameters, steps,
    s/step, tokens/s, peak memory of the training phase (see `PhasePeak`), processes, losses.

chat_eval
    Held-out response loss and perplexity on the chat eval split; optionally greedy/sampled
    replies to the first `samples` eval prompts, written to <stage dir>/samples.jsonl.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparseft.chat.generate import GenerateConfig, generate_reply
from sparseft.chat.launch import check_cpu_distributed
from sparseft.chat.loss import ResponseLoss, response_loss
from sparseft.chat.modes import (MODES, apply_lora, lora_rank_for_count, lora_target_names, mask_config, run_sparse,
                                trainable_count)
from sparseft.chat.packing import ChatCollator, pack_features, packing_stats
from sparseft.config.base import BaseConfig
from sparseft.masks.config import DEFAULT_MASK
from sparseft.registry import register_method
from sparseft.train.config import TrainConfig
from sparseft.train.identity import recipe_inputs
from sparseft.train.loop import train
from sparseft.utils.io import atomic_dir, atomic_write_text


@dataclass
class ChatSFTConfig(BaseConfig):
    """Args:
        mode: 'full', 'sparse' or 'lora'.
        output_dir / seed: the run's defaults (<run dir>/<stage name>, run seed); they override
            `train.output_dir` / `train.seed`.
        train: TrainConfig fields (epochs, max_steps, batch_size, grad_accum, lr, eval_every, ...).
        packing: pack several examples per sequence (never across the label/attention boundary).
        gradient_checkpointing: recompute activations in backward (less memory, ~30% slower).
        mask: sparse mode's registered mask method; its default is masks.config.DEFAULT_MASK.
        density: sparse mode's share of the targeted Linear weights that train.
        mask_options: other fields of the mask method's config (e.g. {"allocation": "per_tensor"}).
        lora_dim / lora_alpha / lora_module_name / lora_dropout: LoRA rank, alpha (None = rank,
            i.e. scaling 1 as DeepSpeed-Chat), the substring that picks Linear layers, dropout.
        lora_dim_for_density: instead of `lora_dim`, use the rank whose LoRA trainable count is
            closest to this density of the targeted Linear weights (compare LoRA with sparse
            fine-tuning at the same trainable count).
        merge_lora: merge the adapter into the model after training.
    """

    mode: str = "full"
    output_dir: str = "runs/chat_sft"
    seed: int = 42
    train: Any = field(default_factory=dict)
    packing: bool = False
    gradient_checkpointing: bool = False
    mask: str = DEFAULT_MASK
    density: float = 0.01
    mask_options: dict = field(default_factory=dict)
    lora_dim: int = 8
    lora_alpha: float | None = None
    lora_module_name: str = "layers."
    lora_dropout: float = 0.0
    lora_dim_for_density: float | None = None
    merge_lora: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown chat_sft mode {self.mode!r}; valid choices: {', '.join(MODES)}")
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a mapping of TrainConfig fields, got {type(self.train).__name__}")
        self.train = self.train.replace(output_dir=self.output_dir, seed=self.seed)
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.lora_dim < 1:
            raise ValueError(f"lora_dim must be >= 1, got {self.lora_dim}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0 or None, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_dim_for_density is not None and not 0.0 < self.lora_dim_for_density <= 1.0:
            raise ValueError(f"lora_dim_for_density must be in (0, 1] or None, got {self.lora_dim_for_density}")
        if not self.lora_module_name:
            raise ValueError("lora_module_name must be a non-empty substring of module names, e.g. 'layers.'")


class PhasePeak:
    """Peak memory of a block: CUDA allocator peak on GPU; on Linux CPUs the kernel's RSS
    high-water mark, reset at entry through /proc/self/clear_refs (so model loading before the
    block does not count). `before_mb` is the process peak up to entry; `reset` says whether the
    reset worked (if not, `peak_mb` is the whole process's peak)."""

    def __enter__(self) -> "PhasePeak":
        self.before_mb, self.reset, self.peak_mb = _rss_hwm_mb(), False, 0.0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.reset = True
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.reset = True
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
                        else _rss_hwm_mb())


def _rss_hwm_mb() -> float:
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    except (OSError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _chat_data(ctx, name: str):
    chat = ctx.state.get("chat_data")
    if chat is None:
        raise ValueError(f"stage {name!r} needs a `chat_data` stage before it (it tokenizes the chat data)")
    return chat


def chat_sft_stage(ctx, cfg: ChatSFTConfig, name: str) -> None:
    chat = _chat_data(ctx, name)
    check_cpu_distributed()
    train_data = pack_features(chat.train, chat.max_seq_len) if cfg.packing else chat.train
    eval_fn = None
    if chat.eval and cfg.train.eval_every != "never":
        def eval_fn(m):
            return response_loss(m, chat.eval, pad_id=ctx.pad_id, batch_size=cfg.train.eval_batch_size)
    kw = {"collate_fn": ChatCollator(ctx.pad_id), "eval_fn": eval_fn, "loss_fn": ResponseLoss(),
          "inputs": recipe_inputs(ctx.recipe, cfg, files=chat.files)}  # resume identity
    model = ctx.model
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with PhasePeak() as peak:
        if cfg.mode == "full":
            result, extra = _train_full(model, train_data, cfg, kw)
        elif cfg.mode == "lora":
            result, extra, model = _train_lora(model, train_data, cfg, kw)
        else:
            result, extra = _train_sparse(model, train_data, cfg, kw, base_id=ctx.recipe.model)
    if cfg.mode == "lora":
        ctx.model = model.merge_and_unload() if cfg.merge_lora else model
    if cfg.gradient_checkpointing:
        ctx.model.gradient_checkpointing_disable()
    ctx.state[name] = result
    losses = [h["loss"] for h in result.history if "loss" in h]
    ctx.report.log(name, {
        "mode": cfg.mode, **extra, "packing": cfg.packing, "gradient_checkpointing": cfg.gradient_checkpointing,
        **(packing_stats(train_data, chat.max_seq_len) if cfg.packing else {}),
        "num_processes": _world()[1], "steps": result.steps, "train_seconds": result.train_seconds,
        "seconds_per_step": result.seconds_per_step, "tokens_per_second": result.tokens_per_second,
        "peak_memory_mb": peak.peak_mb, "peak_memory_is_phase": peak.reset, "memory_before_mb": peak.before_mb,
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "best_eval_loss": result.best_metric, "best_step": result.best_step})


def _train_full(model, data, cfg: ChatSFTConfig, kw: dict):
    for p in model.parameters():
        p.requires_grad_(True)
    extra = {"trainable_params": trainable_count(model)}
    return train(model, data, cfg.train, metric=("loss", False), **kw), extra


def _train_lora(model, data, cfg: ChatSFTConfig, kw: dict):
    """Wrap in peft LoRA, train, save the adapter (rank 0); returns (result, extra, peft model)."""
    names = lora_target_names(model, cfg.lora_module_name)
    rank, extra = cfg.lora_dim, {}
    if cfg.lora_dim_for_density is not None:
        mods = dict(model.named_modules())
        target = round(cfg.lora_dim_for_density * sum(mods[n].weight.numel() for n in names))
        rank = lora_rank_for_count(model, cfg.lora_module_name, target)
        extra["lora_matched_count"] = target
    model = apply_lora(model, rank=rank, alpha=cfg.lora_alpha, module_name=cfg.lora_module_name,
                       dropout=cfg.lora_dropout)
    extra.update(trainable_params=trainable_count(model), lora_dim=rank, lora_layers=len(names))
    result = train(model, data, cfg.train, metric=("loss", False), **kw)
    path = Path(cfg.output_dir) / "adapter"
    if _world()[0] == 0:
        with atomic_dir(path) as tmp:
            model.save_pretrained(tmp)
    extra["adapter"] = str(path)
    return result, extra, model


def _train_sparse(model, data, cfg: ChatSFTConfig, kw: dict, *, base_id: str):
    """Sparse fine-tuning through the engine; the diff is saved (rank 0), the model keeps W0 + delta."""
    from sparseft.export.sparse_diff import save_diff
    from sparseft.sft.layer import merge_sparse_, sparse_layers

    mcfg = mask_config(cfg.mask, cfg.density, cfg.mask_options)
    result, diff = run_sparse(model, data, cfg.train, mcfg, base_id=base_id, **kw)
    if sparse_layers(model):  # the engine hands back plain modules; make sure
        merge_sparse_(model)
    path = Path(cfg.output_dir) / "diff"
    if _world()[0] == 0:
        save_diff(diff, path)
    return result, {"trainable_params": diff.count + diff.dense_count, "mask": cfg.mask, "density": cfg.density,
                    "diff": str(path)}


def _world() -> tuple[int, int]:
    """(rank, world size) of the process group the training loop set up (0, 1 without one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class ChatEvalConfig(BaseConfig):
    """Args:
        batch_size: eval batch size.
        samples: generate replies for the first N eval prompts (0: none) into samples.jsonl.
        generate: GenerateConfig fields (max_new_tokens, do_sample, temperature, top_p, top_k, seed).
        output_dir: where samples.jsonl goes (run default: <run dir>/<stage name>).
    """

    batch_size: int = 8
    samples: int = 0
    generate: Any = field(default_factory=dict)
    output_dir: str = "runs/chat_eval"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.samples < 0:
            raise ValueError(f"samples must be >= 0, got {self.samples}")
        if isinstance(self.generate, dict):
            self.generate = GenerateConfig.from_dict(self.generate)
        if not isinstance(self.generate, GenerateConfig):
            raise ValueError(f"generate must be a mapping of GenerateConfig fields, got {type(self.generate).__name__}")


def chat_eval_stage(ctx, cfg: ChatEvalConfig, name: str) -> None:
    chat = _chat_data(ctx, name)
    if not chat.eval:
        raise ValueError(f"stage {name!r}: the chat data has no eval examples")
    metrics = response_loss(ctx.model, chat.eval, pad_id=ctx.pad_id, batch_size=cfg.batch_size)
    metrics = {"response_loss": metrics.pop("loss"), **metrics}
    if cfg.samples:
        t0 = time.perf_counter()
        rows = []
        for conv in chat.eval_convs[:cfg.samples]:
            last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
            reply = generate_reply(ctx.model, chat.template, conv[:last], cfg.generate)
            rows.append({"prompt": conv[:last], "reference": conv[last]["content"], "reply": reply})
        path = Path(cfg.output_dir) / "samples.jsonl"
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        metrics.update(samples_file=str(path), generate_seconds=time.perf_counter() - t0)
    ctx.state[name] = metrics
    ctx.report.log(name, metrics)


register_method(kind="stage", name="chat_sft", config_cls=ChatSFTConfig, apply_fn=chat_sft_stage,
                description="chat SFT: full / sparse / LoRA with assistant-only loss")
register_method(kind="stage", name="chat_eval", config_cls=ChatEvalConfig, apply_fn=chat_eval_stage,
                description="held-out response loss, perplexity, sample replies")

"""Chat SFT data: read files, convert formats, split, limit, template and tokenize; stage `chat_data`.

Order of operations (each step stated so a subset is reproducible):
  1. read the training file and convert every record to messages (formats.py);
  2. DeepSpeed-Chat `data_split` (optional): keep portion `data_split_index` (0 = step 1, SFT);
  3. eval: the eval file (same `data_split` applied, as DeepSpeed-Chat does) or, without one, a
     seeded `eval_fraction` held out of the training portion;
  4. `train_limit` / `eval_limit`: the first N conversations in file order;
  5. render with the chat template and tokenize (template.py). Training labels follow `loss_on`;
     eval labels are always assistant-only, so eval reports the response loss.

In a recipe, the files default to the recipe's `data:` section (`data.train`, `data.eval`,
`data.train_limit`, `data.eval_limit`; use `task: lm`), so one recipe names its files once:

    data: {task: lm, train: ../shared/data/dolly_open_qa/train.jsonl,
           eval: ../shared/data/dolly_open_qa/validation.jsonl, train_limit: 300}
    stages:
      - {name: data, method: chat_data, max_seq_len: 512}
      - {name: sft, method: chat_sft, mode: sparse, density: 0.01}
      - {name: after, method: chat_eval}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparseft.chat.formats import (FORMATS, data_split_indices, parse_data_split, read_chat_file,
                                   records_to_conversations)
from sparseft.chat.template import LOSS_ON, ChatTemplate, resolve_template, tokenize_conversations
from sparseft.config.base import BaseConfig
from sparseft.load.data import split_records
from sparseft.registry import register_method


@dataclass
class ChatDataConfig(BaseConfig):
    """Args:
        train / eval: chat data files (JSON lines or a JSON list); empty = the recipe's data.train /
            data.eval. Without an eval file, `eval_fraction` of the training portion is held out.
        format: one of FORMATS ('auto' detects from the first record's keys).
        template: 'auto' (model's chat template, else the fallback), 'model', 'fallback' or a path
            to a Jinja template file.
        max_seq_len: tokens per example after truncation (DeepSpeed-Chat --max_seq_len).
        loss_on: 'assistant' (default: loss only on assistant tokens) or 'all' (every token, as
            DeepSpeed-Chat step 1).
        response_share: when truncating, the last response keeps at least this share of
            max_seq_len (or all of itself).
        data_split / data_split_index / split_seed: DeepSpeed-Chat --data_split (e.g. '2,4,4'),
            the portion to use (0 = step 1) and its seed (DeepSpeed-Chat's default 1234).
        train_limit / eval_limit: keep the first N conversations (None = the recipe's limits).
    """

    train: str = ""
    eval: str = ""
    format: str = "auto"
    template: str = "auto"
    max_seq_len: int = 512
    loss_on: str = "assistant"
    response_share: float = 0.5
    data_split: str = ""
    data_split_index: int = 0
    split_seed: int = 1234
    eval_fraction: float = 0.1
    train_limit: int | None = None
    eval_limit: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown chat format {self.format!r}; valid choices: {', '.join(FORMATS)}")
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, got {self.loss_on!r}")
        if self.max_seq_len < 8:
            raise ValueError(f"max_seq_len must be >= 8, got {self.max_seq_len}")
        if not 0.0 < self.response_share <= 1.0:
            raise ValueError(f"response_share must be in (0, 1], got {self.response_share}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.data_split:
            n = len(parse_data_split(self.data_split))
            if not 0 <= self.data_split_index < n:
                raise ValueError(f"data_split_index must be in [0, {n}) for data_split {self.data_split!r}, "
                                 f"got {self.data_split_index}")
        for name in ("train_limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive count or None, got {value}")


@dataclass
class ChatData:
    """Tokenized chat data plus the conversations it came from (for generation samples)."""

    format: str
    template: ChatTemplate
    train: list[dict]
    eval: list[dict]
    max_seq_len: int
    train_convs: list[list[dict]] = field(default_factory=list)
    eval_convs: list[list[dict]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # {"train", "eval"}: paths read (resume identity)


def _portion(convs: list, cfg: ChatDataConfig) -> list:
    if not cfg.data_split:
        return convs
    keep = data_split_indices(len(convs), cfg.data_split, cfg.data_split_index, cfg.split_seed)
    return [convs[i] for i in sorted(keep)]


def load_conversations(cfg: ChatDataConfig) -> tuple[list, list, str]:
    """(train conversations, eval conversations, format) per steps 1-4 of the module docstring."""
    if not cfg.train:
        raise ValueError("no chat training file: set `train` (or the recipe's data.train)")
    train, fmt = records_to_conversations(read_chat_file(cfg.train), cfg.format, source=cfg.train)
    train = _portion(train, cfg)
    if cfg.eval:
        evals, _ = records_to_conversations(read_chat_file(cfg.eval), cfg.format, source=cfg.eval)
        evals = _portion(evals, cfg)
    else:
        train, evals = split_records(train, cfg.eval_fraction, cfg.split_seed)
    if cfg.train_limit:
        train = train[:cfg.train_limit]
    if cfg.eval_limit:
        evals = evals[:cfg.eval_limit]
    if not train:
        raise ValueError(f"no training conversations left (data_split={cfg.data_split!r}, "
                         f"index {cfg.data_split_index})")
    return train, evals, fmt


def build_chat_data(cfg: ChatDataConfig, tokenizer) -> ChatData:
    """Read, convert, split and tokenize; see the module docstring for the order of steps."""
    train_convs, eval_convs, fmt = load_conversations(cfg)
    template = resolve_template(tokenizer, cfg.template)
    kw = {"max_seq_len": cfg.max_seq_len, "response_share": cfg.response_share}
    train = tokenize_conversations(train_convs, template, loss_on=cfg.loss_on, **kw)
    evals = tokenize_conversations(eval_convs, template, loss_on="assistant", **kw)
    stats = {"format": fmt, "template": template.name, "loss_on": cfg.loss_on,
             "train_examples": len(train), "eval_examples": len(evals),
             "train_tokens": sum(len(f["input_ids"]) for f in train),
             "train_label_tokens": sum(sum(x != -100 for x in f["labels"]) for f in train),
             "eval_response_tokens": sum(sum(x != -100 for x in f["labels"]) for f in evals),
             "truncated": sum(f["truncated"] for f in train + evals),
             "response_cut": sum(f["response_cut"] for f in train + evals)}
    return ChatData(fmt, template, train, evals, cfg.max_seq_len, train_convs, eval_convs, stats,
                    files={"train": cfg.train, "eval": cfg.eval})


def chat_data_stage(ctx, cfg: ChatDataConfig, name: str) -> None:
    """Stage `chat_data`: fill missing files/limits from the recipe's data section, build, store."""
    data = ctx.recipe.data
    cfg = cfg.replace(train=cfg.train or data.train, eval=cfg.eval or data.eval,
                      train_limit=cfg.train_limit or data.train_limit,
                      eval_limit=cfg.eval_limit or data.eval_limit)
    chat = build_chat_data(cfg, ctx.tokenizer)
    ctx.state["chat_data"] = chat
    ctx.report.log(name, {"train_file": cfg.train, "eval_file": cfg.eval or f"{cfg.eval_fraction:.0%} of train",
                          "max_seq_len": cfg.max_seq_len, **chat.stats})


register_method(kind="stage", name="chat_data", config_cls=ChatDataConfig, apply_fn=chat_data_stage,
                description="chat SFT data: formats, chat template, assistant-only labels")

"""Generate assistant replies: greedy or sampling, through the same chat template as training.

`generate_reply(model, template, messages, cfg)` renders the conversation with the generation
prompt, runs `model.generate` and returns the decoded new text. Generation stops at EOS, at the
template's end-of-turn tokens (`<|im_end|>` ...) and, for the fallback template, at the next
"### Human:" marker (which is cut from the reply). Sampling is seeded when `cfg.seed` is set, so
sampled replies are reproducible.

    cfg = GenerateConfig(max_new_tokens=64)                                 # greedy
    cfg = GenerateConfig(do_sample=True, temperature=0.7, top_p=0.9, seed=0)  # sampling
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sparseft.chat.template import ChatTemplate
from sparseft.config.base import BaseConfig, known_config


@known_config
@dataclass
class GenerateConfig(BaseConfig):
    """Args:
        max_new_tokens: reply length limit in tokens.
        do_sample: False = greedy decoding; True = sampling with temperature / top_p / top_k.
        temperature: > 0; top_p: (0, 1]; top_k: 0 disables.
        repetition_penalty: 1.0 disables.
        seed: seeds sampling (None: not reseeded).
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


class _StopOnStrings:
    """Stop when the decoded reply contains a stop string. (transformers' own `stop_strings`
    needs a BPE/SentencePiece vocabulary and fails on word-piece tokenizers.)"""

    def __init__(self, tokenizer, prompt_len: int, stops: Sequence[str]) -> None:
        self.tokenizer, self.prompt_len, self.stops = tokenizer, prompt_len, tuple(stops)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_reply(model, template: ChatTemplate, messages: Sequence[dict], cfg: GenerateConfig) -> str:
    """The assistant's next reply to `messages` (which should end with a user turn).

    Example:
        >>> generate_reply(model, resolve_template(tok), [{"role": "user", "content": "Hi"}],
        ...                GenerateConfig(max_new_tokens=32))  # doctest: +SKIP
    """
    tok = template.tokenizer
    prompt = template.render(messages, add_generation_prompt=True)
    device = next(model.parameters()).device
    ids = torch.tensor([template.encode(prompt)], dtype=torch.long, device=device)  # [1, T]
    kwargs = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample,
              "eos_token_id": template.stop_token_ids or None,
              "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
              "repetition_penalty": cfg.repetition_penalty}
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
    else:  # explicit greedy settings: a model's generation_config may default to sampling
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if template.stop_strings:
        from transformers import StoppingCriteriaList

        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopOnStrings(tok, ids.shape[1], template.stop_strings)])
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    finally:
        model.train(was_training)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    for stop in template.stop_strings:
        text = text.split(stop)[0]
    return text.strip()
